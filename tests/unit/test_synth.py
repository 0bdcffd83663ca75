"""carve.pipeline.synth: the synthetic demo is deterministic, anatomy-like in mm, oblique, and not a threshold task."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.filters import threshold_multiotsu, threshold_otsu

import carve.imaging.io
import carve.pipeline.synth
from carve.imaging.dicom import read_dicom_series
from carve.imaging.io import read_image
from carve.pipeline.sheet import load_sheet
from carve.pipeline.synth import generate_demo, synthesize_case

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
SMALL = {"shape": (12, 32, 32), "spacing_mm": (6.0, 2.0, 2.0)}  # the same 72 x 64 x 64 mm field, coarser


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_deterministic_per_seed():
    a, b = synthesize_case(3, **SMALL), synthesize_case(3, **SMALL)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2], strict=True)) and a[2] == b[2]
    c = synthesize_case(4, **SMALL)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1]) and a[2] != c[2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_touching_structures_of_plausible_size_on_an_oblique_anisotropic_grid(seed):
    image, label, geometry = synthesize_case(seed)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape == (24, 64, 64)
    assert set(np.unique(label)) == {0, 1, 2}
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    organ_mm3, tube_mm3 = ((label == k).sum() * voxel_mm3 for k in (1, 2))
    assert 2000 < organ_mm3 < 20000 and 300 < tube_mm3 < 8000
    assert (ndimage.binary_dilation(label == 1) & (label == 2)).any()  # in contact
    assert ndimage.label(label == 2)[1] == 1
    assert geometry.spacing_mm == (3.0, 1.0, 1.0)
    d = geometry.direction_matrix
    assert np.abs(d.T @ d - np.eye(3)).max() < 1e-12
    angle = np.degrees(Rotation.from_matrix(d @ AXIAL.T).magnitude())
    assert 5.0 - 1e-9 <= angle <= 20.0 + 1e-9  # rotated away from axial by the seeded oblique angle
    assert not np.allclose(np.abs(d), AXIAL)


def test_shapes_are_physical_not_voxel_based():
    """The same seed on a grid twice as coarse gives the same structures in mm^3 (within discretisation)."""
    _, fine, g_fine = synthesize_case(5)
    _, coarse, g_coarse = synthesize_case(5, **SMALL)
    for k in (1, 2):
        v_fine = (fine == k).sum() * np.prod(g_fine.spacing_mm)
        v_coarse = (coarse == k).sum() * np.prod(g_coarse.spacing_mm)
        assert abs(v_fine - v_coarse) < 0.25 * v_fine
    assert np.allclose(g_fine.direction_matrix, g_coarse.direction_matrix)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_threshold_cannot_segment_it(seed):
    image, label, _ = synthesize_case(seed)
    thresholds = np.quantile(image, np.linspace(0.2, 0.999, 150))
    best_organ = max(dice(image > t, label == 1) for t in thresholds)
    best_tube = max(dice(image > t, label == 2) for t in thresholds)
    best_both = max(dice(image > t, label > 0) for t in thresholds)
    assert best_organ < 0.7 and best_tube < 0.5 and best_both < 0.7
    assert dice(image > threshold_otsu(image), label > 0) < 0.5
    low, high = threshold_multiotsu(image, classes=3)
    assert dice(image > high, label == 1) < 0.5 and dice((image > low) & (image <= high), label == 2) < 0.2
    # the two structures' intensity ranges overlap: no threshold splits organ from tube
    organ, tube = image[label == 1], image[label == 2]
    (o_lo, o_hi), (t_lo, t_hi) = np.percentile(organ, [5, 95]), np.percentile(tube, [5, 95])
    assert ((tube > o_lo) & (tube < o_hi)).mean() > 0.5 and ((organ > t_lo) & (organ < t_hi)).mean() > 0.3


def test_generate_demo_round_trip(tmp_path):
    sheet = generate_demo(tmp_path / "demo", n_train=2, n_test=1, seed=7, **SMALL)
    assert sheet == tmp_path / "demo" / "cases.tsv"
    lines = sheet.read_text().splitlines()
    assert lines[0] == "case\timage\tlabel\trole"
    assert lines[1:] == [
        "demo_000\tdicom/demo_000\tlabels/demo_000.nii.gz\ttrain",
        "demo_001\tdicom/demo_001\tlabels/demo_001.nii.gz\ttrain",
        "demo_002\tdicom/demo_002\tlabels/demo_002.nii.gz\ttest",
    ]
    assert [c.role for c in load_sheet(sheet)] == ["train", "train", "test"]
    for case in ("demo_000", "demo_002"):
        image, geometry = read_dicom_series(sheet.parent / "dicom" / case)
        label, label_geometry = read_image(sheet.parent / "labels" / f"{case}.nii.gz")
        assert image.shape == label.shape == SMALL["shape"]
        assert geometry.is_close(label_geometry, 1e-4, shape=image.shape)
        assert set(np.unique(label)) == {0, 1, 2}
    again = generate_demo(tmp_path / "again", n_train=2, n_test=1, seed=7, **SMALL)
    for case in ("demo_000", "demo_001", "demo_002"):
        first, second = sheet.parent / "dicom" / case, again.parent / "dicom" / case
        pairs = zip(sorted(first.iterdir()), sorted(second.iterdir()), strict=True)
        assert all(a.read_bytes() == b.read_bytes() for a, b in pairs)
        assert np.array_equal(
            read_image(sheet.parent / "labels" / f"{case}.nii.gz")[0],
            read_image(again.parent / "labels" / f"{case}.nii.gz")[0],
        )


def test_interrupted_demo_leaves_no_sheet(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    generate_demo(out, n_train=1, n_test=1, seed=1, **SMALL)
    assert (out / "cases.tsv").is_file()
    calls = []

    def failing_write_image(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return carve.imaging.io.write_image(*args, **kwargs)

    monkeypatch.setattr(carve.pipeline.synth, "write_image", failing_write_image)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(out, n_train=1, n_test=1, seed=2, **SMALL)
    assert not (out / "cases.tsv").exists()


def test_second_domain_inverts_the_contrast_of_the_same_anatomy():
    t1, label, geometry = synthesize_case(3, **SMALL)
    t2, label2, geometry2 = synthesize_case(3, **SMALL, domain=1)
    np.testing.assert_array_equal(label, label2)
    assert geometry == geometry2
    organ, body = label == 1, (label == 0) & (t1 > 0.2 * t1.max())
    assert np.median(t1[organ]) > np.median(t1[body])  # T1-like: bright organ
    assert np.median(t2[organ]) < np.median(t2[label == 0][t2[label == 0] > 300])  # T2-like: darker than the body
    with pytest.raises(ValueError, match="domain must be 0 or 1"):
        synthesize_case(3, **SMALL, domain=2)
