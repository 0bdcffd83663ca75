"""Known-answer tests for carve.metrics on tiny anisotropic volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carve.metrics import (
    evaluate_labels,
    overlap_metrics,
    surface_distances,
    surface_metrics,
    surfel_area_table,
    volume_difference,
    volume_ml,
)

SPACING = (2.5, 0.7, 0.9)


def _world_grid(shape, spacing):
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")


def _ellipsoid(shape, spacing, centre, semi_axes):
    zz, yy, xx = _world_grid(shape, spacing)
    c, r = centre, semi_axes
    return (zz - c[0]) ** 2 / r[0] ** 2 + (yy - c[1]) ** 2 / r[1] ** 2 + (xx - c[2]) ** 2 / r[2] ** 2 <= 1


# ---- overlap ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_matches_direct_numpy(seed):
    rng = np.random.default_rng(seed)
    ref = rng.random((6, 7, 8)) < 0.4
    pred = rng.random((6, 7, 8)) < 0.3
    m = overlap_metrics(ref, pred, SPACING)
    tp = np.sum(ref & pred)
    fp = np.sum(~ref & pred)
    fn = np.sum(ref & ~pred)
    tn = np.sum(~ref & ~pred)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["dice"] == pytest.approx(2 * tp / (ref.sum() + pred.sum()))
    assert m["f1"] == m["dice"]
    assert m["iou"] == pytest.approx(tp / np.sum(ref | pred))
    assert m["precision"] == pytest.approx(tp / pred.sum())
    assert m["recall"] == pytest.approx(tp / ref.sum())
    assert m["specificity"] == pytest.approx(tn / (~ref).sum())
    assert m["accuracy"] == pytest.approx((tp + tn) / ref.size)
    voxel_ml = np.prod(SPACING) / 1000
    assert m["reference_volume_ml"] == pytest.approx(ref.sum() * voxel_ml)
    assert m["prediction_volume_ml"] == pytest.approx(pred.sum() * voxel_ml)
    assert m["volume_difference_ml"] == pytest.approx((pred.sum() - ref.sum()) * voxel_ml)
    assert m["volume_difference_rel"] == pytest.approx((pred.sum() - ref.sum()) / ref.sum())


def test_overlap_accepts_integer_masks_and_omits_volumes_without_spacing():
    ref = np.zeros((3, 3, 3), dtype=np.uint8)
    ref[1, 1, 1] = 7
    m = overlap_metrics(ref, ref.astype(bool))
    assert m["dice"] == 1.0 and m["tp"] == 1
    assert "reference_volume_ml" not in m


def test_empty_conventions():
    empty = np.zeros((4, 4, 4), dtype=bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True

    both = overlap_metrics(empty, empty, SPACING)
    for key in ("dice", "iou", "f1", "precision", "recall", "specificity", "accuracy"):
        assert both[key] == 1.0, key
    assert both["volume_difference_rel"] == 0.0

    ref_empty = overlap_metrics(empty, full, SPACING)
    assert ref_empty["dice"] == 0.0 and ref_empty["iou"] == 0.0 and ref_empty["precision"] == 0.0
    assert math.isnan(ref_empty["recall"])
    assert math.isnan(ref_empty["volume_difference_rel"])

    pred_empty = overlap_metrics(full, empty, SPACING)
    assert pred_empty["dice"] == 0.0 and pred_empty["recall"] == 0.0
    assert math.isnan(pred_empty["precision"])
    assert pred_empty["volume_difference_rel"] == -1.0

    all_fg = np.ones((2, 2, 2), dtype=bool)
    assert overlap_metrics(all_fg, all_fg)["specificity"] == 1.0
    assert math.isnan(overlap_metrics(all_fg, ~all_fg)["specificity"])


def test_volume_ml_and_difference():
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[:2, :2, :2] = True  # 8 voxels of 2.5*0.7*0.9 = 1.575 mm^3
    assert volume_ml(mask, SPACING) == pytest.approx(8 * 1.575 / 1000)
    bigger = mask.copy()
    bigger[:2, :2, 2:4] = True
    d = volume_difference(mask, bigger, SPACING)
    assert d["volume_difference_ml"] == pytest.approx(8 * 1.575 / 1000)
    assert d["volume_difference_rel"] == pytest.approx(1.0)


def test_shape_and_spacing_errors_are_clear():
    with pytest.raises(ValueError, match="differ"):
        overlap_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing_mm"):
        surface_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3D"):
        surface_metrics(np.zeros((2, 2)), np.zeros((2, 2)), (1.0, 1.0))


# ---- surface ---------------------------------------------------------------------------------------
def test_surfel_area_table_known_entries():
    s0, s1, s2 = SPACING
    table = surfel_area_table(SPACING)
    corner = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8  # one corner triangle
    assert table[0] == 0.0 and table[255] == 0.0
    assert table[1] == pytest.approx(corner)
    # voxels (0,0,1) and (0,1,0) touch along a face diagonal: two separate corner triangles (DeepMind)
    assert table[0b00000110] == pytest.approx(2 * corner)
    # the four voxels with a0 = 0: a flat quad across the block, normal to axis 0
    assert table[0b00001111] == pytest.approx(s1 * s2)


def test_hand_computed_two_voxel_example():
    ref = np.zeros((5, 5, 5), dtype=bool)
    pred = np.zeros_like(ref)
    ref[2, 2, 2] = True
    pred[2, 2, 3] = True  # neighbour along axis 2 (0.9 mm)
    sd = surface_distances(ref, pred, SPACING)
    # each single voxel has 8 surface corners; 4 are shared, the other 4 lie 0.9 mm away
    np.testing.assert_allclose(sd["distances_ref_to_pred"], [0, 0, 0, 0, 0.9, 0.9, 0.9, 0.9])
    np.testing.assert_allclose(sd["distances_pred_to_ref"], [0, 0, 0, 0, 0.9, 0.9, 0.9, 0.9])
    assert np.ptp(sd["areas_ref"]) == pytest.approx(0.0)
    m = surface_metrics(ref, pred, SPACING, tolerance_mm=0.5)
    assert m["hd_mm"] == pytest.approx(0.9)
    assert m["hd95_mm"] == pytest.approx(0.9)
    assert m["assd_mm"] == pytest.approx(0.45)
    assert m["nsd"] == pytest.approx(0.5)
    assert surface_metrics(ref, pred, SPACING, tolerance_mm=0.9)["nsd"] == pytest.approx(1.0)
    assert overlap_metrics(ref, pred)["dice"] == 0.0


def test_identical_masks_have_zero_distance():
    mask = _ellipsoid((12, 30, 30), SPACING, (14, 10, 13), (9, 7, 8))
    m = surface_metrics(mask, mask, SPACING)
    assert m["hd_mm"] == 0.0 and m["hd95_mm"] == 0.0 and m["assd_mm"] == 0.0
    assert m["nsd"] == 1.0


def test_empty_surface_conventions():
    empty = np.zeros((4, 4, 4), dtype=bool)
    blob = empty.copy()
    blob[1:3, 1:3, 1:3] = True
    both = surface_metrics(empty, empty, SPACING)
    assert (both["hd_mm"], both["hd95_mm"], both["assd_mm"], both["nsd"]) == (0.0, 0.0, 0.0, 1.0)
    for ref, pred in ((empty, blob), (blob, empty)):
        one = surface_metrics(ref, pred, SPACING)
        assert math.isinf(one["hd_mm"]) and math.isinf(one["hd95_mm"]) and math.isinf(one["assd_mm"])
        assert one["nsd"] == 0.0


@pytest.mark.parametrize("k", [1, 3])
def test_cube_shifted_along_anisotropic_axis(k):
    ref = np.zeros((16, 14, 14), dtype=bool)
    ref[3:9, 3:11, 3:11] = True
    pred = np.roll(ref, k, axis=0)
    m = surface_metrics(ref, pred, SPACING, tolerance_mm=k * SPACING[0] - 0.1)
    assert m["hd_mm"] == pytest.approx(k * SPACING[0])
    assert m["nsd"] < 1.0
    assert surface_metrics(ref, pred, SPACING, tolerance_mm=k * SPACING[0])["nsd"] == pytest.approx(1.0)


def test_concentric_spheres():
    r1, r2 = 9.0, 6.0
    shape = (10, 32, 26)
    centre = (12.4, 10.9, 11.2)
    outer = _ellipsoid(shape, SPACING, centre, (r1, r1, r1))
    inner = _ellipsoid(shape, SPACING, centre, (r2, r2, r2))
    m = surface_metrics(outer, inner, SPACING, tolerance_mm=1.0)
    diagonal = float(np.linalg.norm(SPACING))
    assert abs(m["hd95_mm"] - (r1 - r2)) < diagonal
    assert abs(m["assd_mm"] - (r1 - r2)) < diagonal
    assert m["hd_mm"] >= m["hd95_mm"] >= m["assd_mm"]
    assert m["nsd"] < 0.2  # 3 mm apart, 1 mm tolerance


def test_matches_deepmind_surface_distance_reference_values():
    """Values computed with DeepMind's surface-distance 0.1 on the same masks (compute_robust_hausdorff
    at 100 and 95, area-weighted mean of compute_average_surface_distance, compute_surface_dice_at_tolerance).
    """
    shape = (20, 60, 50)
    a = _ellipsoid(shape, SPACING, (25, 21, 22), (15, 14, 16))
    b = _ellipsoid(shape, SPACING, (27, 20, 22), (14, 15, 15))
    m = surface_metrics(a, b, SPACING, tolerance_mm=1.0)
    assert m["hd_mm"] == pytest.approx(3.0805843601498726)
    assert m["hd95_mm"] == pytest.approx(2.5)
    assert m["assd_mm"] == pytest.approx(0.8531716613369927)
    assert m["nsd"] == pytest.approx(0.6552615390609016)
    noisy = b ^ (np.random.default_rng(0).random(shape) < 0.02)  # many ambiguous 2x2x2 configurations
    m = surface_metrics(a, noisy, SPACING, tolerance_mm=1.0)
    assert m["hd_mm"] == pytest.approx(23.292058732538006)
    assert m["hd95_mm"] == pytest.approx(14.034600101178514)
    assert m["assd_mm"] == pytest.approx(2.933738576617208)
    assert m["nsd"] == pytest.approx(0.5095578692815876)


def test_mask_touching_the_volume_border():
    ref = np.ones((3, 4, 5), dtype=bool)
    pred = ref.copy()
    pred[-1] = False
    m = surface_metrics(ref, pred, SPACING)
    assert m["hd_mm"] == pytest.approx(SPACING[0])


# ---- per label -------------------------------------------------------------------------------------
def test_evaluate_labels():
    ref = np.zeros((8, 10, 10), dtype=np.uint8)
    ref[1:4, 2:6, 2:6] = 1
    ref[5:7, 2:8, 2:8] = 3
    pred = ref.copy()
    pred[5:7, 2:8, 2:8] = 0
    rows = evaluate_labels(ref, pred, SPACING, {1: "liver", 3: "spleen", 4: "absent"})
    assert [r["label"] for r in rows] == ["liver", "spleen", "absent"]
    assert [r["label_value"] for r in rows] == [1, 3, 4]
    liver, spleen, absent = rows
    assert liver["dice"] == 1.0 and liver["hd95_mm"] == 0.0 and liver["nsd"] == 1.0
    assert liver["reference_volume_ml"] == pytest.approx(48 * np.prod(SPACING) / 1000)
    assert spleen["dice"] == 0.0 and math.isinf(spleen["hd_mm"]) and math.isnan(spleen["precision"])
    assert absent["dice"] == 1.0 and absent["assd_mm"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        evaluate_labels(ref, pred[:-1], SPACING, {1: "liver"})
