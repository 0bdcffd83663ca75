"""Tests for carve.evaluation.metrics on tiny generated volumes with anisotropic spacing: known answers, the empty-mask
conventions, and live agreement with direct numpy computations, DeepMind's ``surface_distance`` and MONAI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import surface_distance as deepmind
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage

from carve.evaluation.metrics import (
    evaluate_labels,
    overlap_metrics,
    surface_distances,
    surface_metrics,
    surfel_area_table,
    volume_difference,
    volume_ml,
)

# surface-distance 0.1 imports scipy.ndimage.filters / .morphology, deprecated namespaces
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

SPACING = (2.5, 0.7, 0.9)
RANDOM_SPACINGS_MM = ((2.5, 0.7, 0.9), (0.6, 1.3, 3.1), (1.7, 0.45, 0.8))
KINDS = ("blobs", "ellipsoids", "noisy", "border", "thin", "nested", "disjoint")
SEEDS = (0, 1, 2)


def _world_grid(shape, spacing):
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")


def _ellipsoid(shape, spacing, centre, semi_axes):
    zz, yy, xx = _world_grid(shape, spacing)
    c, r = centre, semi_axes
    return (zz - c[0]) ** 2 / r[0] ** 2 + (yy - c[1]) ** 2 / r[1] ** 2 + (xx - c[2]) ** 2 / r[2] ** 2 <= 1


def _blob(rng, shape, level=0.1, sigma=1.2):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > level * 0.25


def _random_pair(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A seeded (reference, prediction, spacing_mm) of one kind; both masks non-empty."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    spacing = RANDOM_SPACINGS_MM[seed % len(RANDOM_SPACINGS_MM)]
    shape = tuple(int(n) for n in rng.integers(9, 19, size=3))
    extent = np.array(shape) * spacing
    if kind == "blobs":
        ref, pred = _blob(rng, shape), _blob(rng, shape)
    elif kind == "ellipsoids":
        centre, axes = extent * rng.uniform(0.35, 0.65, 3), extent * rng.uniform(0.2, 0.35, 3)
        ref = _ellipsoid(shape, spacing, centre, axes)
        pred = _ellipsoid(shape, spacing, centre + rng.normal(0, 1.5, 3), axes * rng.uniform(0.8, 1.2, 3))
    elif kind == "noisy":  # many ambiguous 2x2x2 configurations and one-voxel islands
        ref = _blob(rng, shape, level=-0.2)
        pred = ref ^ (rng.random(shape) < 0.05)
    elif kind == "border":  # both masks touch all six faces of the volume
        ref, pred = _blob(rng, shape, level=-0.6), _blob(rng, shape, level=-0.6)
        for axis in range(3):
            for mask in (ref, pred):
                np.moveaxis(mask, axis, 0)[[0, -1]] = True
    elif kind == "thin":  # one-voxel plates and lines
        ref = np.zeros(shape, dtype=bool)
        pred = np.zeros(shape, dtype=bool)
        i, j, k = (int(rng.integers(2, n - 2)) for n in shape)
        ref[i, 1:-2, 2:-1] = True
        ref[1:-1, j, k] = True
        pred[i + int(rng.integers(-1, 2)), 2:-1, 1:-2] = True
        pred[1:-2, j + 1, k - 1] = True
    elif kind == "nested":
        ref = _blob(rng, shape, level=-0.4)
        pred = ndimage.binary_erosion(ref, iterations=int(rng.integers(1, 3)))
    elif kind == "disjoint":
        ref, pred = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
        half = shape[2] // 2
        ref[..., : half - 1] = _blob(rng, shape, level=-0.2)[..., : half - 1]
        pred[..., half + 1 :] = _blob(rng, shape, level=-0.2)[..., half + 1 :]
    else:
        raise AssertionError(kind)
    assert ref.any() and pred.any(), (kind, seed)
    return ref, pred, spacing


# ---- overlap ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_overlap_matches_direct_numpy(kind, seed):
    ref, pred, spacing = _random_pair(kind, seed)
    m = overlap_metrics(ref, pred, spacing)
    tp = np.sum(ref & pred)
    fp = np.sum(~ref & pred)
    fn = np.sum(ref & ~pred)
    tn = np.sum(~ref & ~pred)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["reference_voxels"] == ref.sum() and m["prediction_voxels"] == pred.sum()
    assert m["dice"] == pytest.approx(2 * tp / (ref.sum() + pred.sum()), abs=1e-12)
    assert m["f1"] == m["dice"]
    assert m["iou"] == pytest.approx(tp / np.sum(ref | pred), abs=1e-12)
    assert m["precision"] == pytest.approx(tp / pred.sum(), abs=1e-12)
    assert m["recall"] == pytest.approx(tp / ref.sum(), abs=1e-12)
    assert m["specificity"] == pytest.approx(tn / (~ref).sum(), abs=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(ref == pred), abs=1e-12)
    voxel_ml = np.prod(spacing) / 1000
    assert m["reference_volume_ml"] == pytest.approx(ref.sum() * voxel_ml, rel=1e-12)
    assert m["prediction_volume_ml"] == pytest.approx(pred.sum() * voxel_ml, rel=1e-12)
    assert m["volume_difference_ml"] == pytest.approx((pred.sum() - ref.sum()) * voxel_ml, rel=1e-12)
    assert m["volume_difference_rel"] == pytest.approx((pred.sum() - ref.sum()) / ref.sum(), rel=1e-12)


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


def test_mask_touching_the_volume_border():
    ref = np.ones((3, 4, 5), dtype=bool)
    pred = ref.copy()
    pred[-1] = False
    m = surface_metrics(ref, pred, SPACING)
    assert m["hd_mm"] == pytest.approx(SPACING[0])


def test_crop_does_not_change_the_result():
    ref, pred, spacing = _random_pair("blobs", 0)
    big_ref = np.zeros((40, 31, 37), dtype=bool)
    big_pred = np.zeros_like(big_ref)
    box = tuple(slice(o, o + n) for o, n in zip((20, 3, 11), ref.shape, strict=True))
    big_ref[box], big_pred[box] = ref, pred
    small, big = surface_distances(ref, pred, spacing), surface_distances(big_ref, big_pred, spacing)
    for key in small:
        np.testing.assert_array_equal(small[key], big[key])


def test_tolerance_must_be_finite_and_non_negative():
    mask = np.ones((2, 2, 2), dtype=bool)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance_mm"):
            surface_metrics(mask, mask, SPACING, tolerance_mm=bad)


# ---- agreement with DeepMind's surface-distance ------------------------------------------------------
def _tolerances_mm(spacing):
    """0, a distance that corners reach exactly (so that ``d <= tolerance`` matters), and 1 and 2 mm, which no
    corner offset reaches at the RANDOM_SPACINGS_MM."""
    return (0.0, float(spacing[2]), 1.0, 2.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_surface_metrics_match_deepmind(kind, seed):
    ref, pred, spacing = _random_pair(kind, seed)
    dm = deepmind.compute_surface_distances(ref, pred, spacing)
    ours = surface_distances(ref, pred, spacing)
    for carve_key, dm_key in (
        ("distances_ref_to_pred", "distances_gt_to_pred"),
        ("distances_pred_to_ref", "distances_pred_to_gt"),
        ("areas_ref", "surfel_areas_gt"),
        ("areas_pred", "surfel_areas_pred"),
    ):
        np.testing.assert_allclose(ours[carve_key], dm[dm_key], rtol=0, atol=1e-6, err_msg=carve_key)
    directed_gt, directed_pred = deepmind.compute_average_surface_distance(dm)
    area_gt, area_pred = dm["surfel_areas_gt"].sum(), dm["surfel_areas_pred"].sum()
    assd = (directed_gt * area_gt + directed_pred * area_pred) / (area_gt + area_pred)
    for tolerance_mm in _tolerances_mm(spacing):
        m = surface_metrics(ref, pred, spacing, tolerance_mm)
        assert abs(m["hd_mm"] - deepmind.compute_robust_hausdorff(dm, 100)) <= 1e-6
        assert abs(m["hd95_mm"] - deepmind.compute_robust_hausdorff(dm, 95)) <= 1e-6
        assert abs(m["assd_mm"] - assd) <= 1e-6
        assert abs(m["nsd"] - deepmind.compute_surface_dice_at_tolerance(dm, tolerance_mm)) <= 1e-6, tolerance_mm


def test_surfel_area_table_equals_deepmind():
    for spacing in ((1.0, 1.0, 1.0), *RANDOM_SPACINGS_MM):
        expected = deepmind.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        ours = surfel_area_table(spacing)
        # DeepMind weights voxel (i, j, k) of the 2x2x2 block by 2^(7 - 4i - 2j - k), carve by 2^(4i + 2j + k):
        # the same neighbourhood, with the bits in reverse order.
        reversed_bits = [int(f"{code:08b}"[::-1], 2) for code in range(256)]
        np.testing.assert_allclose(ours[reversed_bits], expected, rtol=0, atol=1e-12)


# ---- agreement with MONAI --------------------------------------------------------------------------
def _one_hot(mask):
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def _monai(function, ref, pred, spacing, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks and a deprecated argument of its own
        return float(function(_one_hot(pred), _one_hot(ref), include_background=True, spacing=list(spacing), **kwargs))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_nsd_matches_monai_subvoxel_surface_dice(kind, seed):
    ref, pred, spacing = _random_pair(kind, seed)
    for tolerance_mm in (0.5, 1.0, 2.0):  # MONAI works in float32: avoid tolerances that a distance reaches
        nsd = _monai(compute_surface_dice, ref, pred, spacing, class_thresholds=[tolerance_mm], use_subvoxels=True)
        assert abs(surface_metrics(ref, pred, spacing, tolerance_mm)["nsd"] - nsd) <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_surfel_distances_match_monai_subvoxel_edges(kind):
    """MONAI's subvoxel edges are DeepMind's surfels: the same distances and areas (float32) as carve's."""
    ref, pred, spacing = _random_pair(kind, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (edges_pred, edges_ref), (d_pred, d_ref), (areas_pred, areas_ref) = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(ref), spacing=list(spacing), use_subvoxels=True, symmetric=True
        )
    ours = surface_distances(ref, pred, spacing)
    for distances, areas, key in ((d_ref, areas_ref[edges_ref], "ref"), (d_pred, areas_pred[edges_pred], "pred")):
        order = np.lexsort((areas.numpy(), distances.numpy()))
        other = "pred" if key == "ref" else "ref"
        np.testing.assert_allclose(ours[f"distances_{key}_to_{other}"], distances.numpy()[order], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours[f"areas_{key}"], areas.numpy()[order], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_voxel_centre_hausdorff_equals_monai_for_translated_boxes(seed):
    """For boxes, the voxel-centre surface and the corner surface are the same box up to half a voxel on every
    side, so the Hausdorff distance between a box and its translate agrees."""
    rng = np.random.default_rng(seed)
    ref = np.zeros((14, 18, 16), dtype=bool)
    pred = np.zeros_like(ref)
    for _ in range(4):
        lo, size = rng.integers(3, 6, 3), rng.integers(2, 8, 3)
        shift = rng.integers(-2, 3, 3)
        ref[tuple(slice(a, a + n) for a, n in zip(lo, size, strict=True))] = True
        pred[tuple(slice(a + t, a + t + n) for a, n, t in zip(lo, size, shift, strict=True))] = True
        hd = _monai(compute_hausdorff_distance, ref, pred, SPACING)
        assert surface_metrics(ref, pred, SPACING)["hd_mm"] == pytest.approx(hd, rel=1e-6)
        ref[:], pred[:] = False, False


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_voxel_centre_hausdorff_differs_from_monai_by_at_most_a_voxel_diagonal(kind, seed):
    """MONAI's HD uses the centres of foreground voxels with a background face neighbour; every surface corner
    is within half a voxel diagonal of such a centre and back, so the two Hausdorff distances differ by at most
    one voxel diagonal (triangle inequality). HD95 and ASSD have no such bound (docs/metrics.md: measured)."""
    ref, pred, spacing = _random_pair(kind, seed)
    hd = _monai(compute_hausdorff_distance, ref, pred, spacing)
    assert abs(surface_metrics(ref, pred, spacing)["hd_mm"] - hd) <= float(np.linalg.norm(spacing)) + 1e-5


# ---- empty masks ------------------------------------------------------------------------------------
def _same(value, expected):
    if isinstance(expected, str):
        return value == expected
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(value, float) and math.isnan(value)
    return value == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_every_metric_has_a_documented_value_for_empty_masks():
    """The table of docs/metrics.md, for every key evaluate_labels writes (a new key fails this test)."""
    shape, tolerance_mm = (5, 6, 7), 1.5
    n_all, n_fg = int(np.prod(shape)), 12
    voxel_ml = float(np.prod(SPACING)) / 1000
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:3, 2:4, 2:5] = 1
    nan, inf = float("nan"), float("inf")
    expected = {
        "both empty": dict(
            tp=0, fp=0, fn=0, tn=n_all, reference_voxels=0, prediction_voxels=0,
            dice=1.0, iou=1.0, f1=1.0, precision=1.0, recall=1.0, specificity=1.0, accuracy=1.0,
            reference_volume_ml=0.0, prediction_volume_ml=0.0, volume_difference_ml=0.0, volume_difference_rel=0.0,
            hd_mm=0.0, hd95_mm=0.0, assd_mm=0.0, nsd=1.0,
        ),
        "reference empty": dict(
            tp=0, fp=n_fg, fn=0, tn=n_all - n_fg, reference_voxels=0, prediction_voxels=n_fg,
            dice=0.0, iou=0.0, f1=0.0, precision=0.0, recall=nan,
            specificity=(n_all - n_fg) / n_all, accuracy=(n_all - n_fg) / n_all,
            reference_volume_ml=0.0, prediction_volume_ml=n_fg * voxel_ml, volume_difference_ml=n_fg * voxel_ml,
            volume_difference_rel=nan, hd_mm=inf, hd95_mm=inf, assd_mm=inf, nsd=0.0,
        ),
        "prediction empty": dict(
            tp=0, fp=0, fn=n_fg, tn=n_all - n_fg, reference_voxels=n_fg, prediction_voxels=0,
            dice=0.0, iou=0.0, f1=0.0, precision=nan, recall=0.0, specificity=1.0, accuracy=(n_all - n_fg) / n_all,
            reference_volume_ml=n_fg * voxel_ml, prediction_volume_ml=0.0, volume_difference_ml=-n_fg * voxel_ml,
            volume_difference_rel=-1.0, hd_mm=inf, hd95_mm=inf, assd_mm=inf, nsd=0.0,
        ),
    }  # fmt: skip
    empty = np.zeros(shape, dtype=np.uint8)
    for case, (ref, pred) in zip(expected, ((empty, empty), (empty, labels), (labels, empty)), strict=True):
        (row,) = evaluate_labels(ref, pred, SPACING, {1: "organ"}, tolerance_mm)
        want = {"label": "organ", "label_value": 1, "nsd_tolerance_mm": tolerance_mm, **expected[case]}
        assert set(row) == set(want), case
        wrong = {key: (row[key], value) for key, value in want.items() if not _same(row[key], value)}
        assert not wrong, (case, wrong)


def test_empty_masks_against_references(monkeypatch):
    """Pins the reference packages' values that docs/metrics.md quotes for empty masks. Where a mask is empty
    carve agrees with both on hd and nsd; both-empty differs on purpose (they give inf or NaN)."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)  # surface-distance 0.1 uses np.Inf, gone in NumPy 2
    empty = np.zeros((5, 6, 7), dtype=bool)
    blob = empty.copy()
    blob[1:3, 2:4, 2:5] = True
    nan, inf = float("nan"), float("inf")
    cases = {  # (ref, pred): DeepMind (hd, hd95, nsd), MONAI (hd, hd95, assd, nsd)
        "both": ((empty, empty), (inf, inf, nan), (nan, nan, nan, nan)),
        "reference": ((empty, blob), (inf, inf, 0.0), (inf, nan, inf, 0.0)),
        "prediction": ((blob, empty), (inf, inf, 0.0), (inf, nan, inf, 0.0)),
    }
    for empty_side, ((ref, pred), dm_expected, monai_expected) in cases.items():
        dm = deepmind.compute_surface_distances(ref, pred, SPACING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DeepMind divides 0 by 0 for the average of an empty surface
            dm_values = (
                deepmind.compute_robust_hausdorff(dm, 100),
                deepmind.compute_robust_hausdorff(dm, 95),
                deepmind.compute_surface_dice_at_tolerance(dm, 1.0),
            )
        monai_values = (
            _monai(compute_hausdorff_distance, ref, pred, SPACING),
            _monai(compute_hausdorff_distance, ref, pred, SPACING, percentile=95),
            _monai(compute_average_surface_distance, ref, pred, SPACING, symmetric=True),
            _monai(compute_surface_dice, ref, pred, SPACING, class_thresholds=[1.0], use_subvoxels=True),
        )
        assert all(_same(float(v), e) for v, e in zip(dm_values, dm_expected, strict=True)), (empty_side, dm_values)
        assert all(_same(v, e) for v, e in zip(monai_values, monai_expected, strict=True)), (empty_side, monai_values)
        m = surface_metrics(ref, pred, SPACING, 1.0)
        if empty_side != "both":
            assert m["hd_mm"] == dm_values[0] == monai_values[0] == inf
            assert m["nsd"] == dm_values[2] == monai_values[3] == 0.0
            assert m["assd_mm"] == monai_values[2] == inf


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
