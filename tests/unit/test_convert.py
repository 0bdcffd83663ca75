import numpy as np
import pytest

from carve.convert import ConversionError, LabelOptions, convert_image, convert_label
from carve.io import Geometry, read_image, write_image

LABELS = {1: "a", 2: "b"}


@pytest.fixture
def case(tmp_path, oblique_geometry):
    image = np.random.default_rng(0).normal(size=(6, 10, 12)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[2:4, 3:7, 3:8] = 1
    labels[1, 1, 1] = 2
    src = tmp_path / "src"
    write_image(src / "image.nii.gz", image, oblique_geometry)
    write_image(src / "label.nii.gz", labels, oblique_geometry)
    out = tmp_path / "out"
    convert_image("c1", src / "image.nii.gz", out / "image.nii.gz")
    return src, out, image, labels, oblique_geometry


def test_image_and_label_converted_with_geometry(case):
    src, out, image, labels, geometry = case
    back, g = read_image(out / "image.nii.gz")
    np.testing.assert_array_equal(back, image)
    assert g.is_close(geometry, 1e-4, image.shape)
    counts = convert_label("c1", src / "label.nii.gz", out / "image.nii.gz", out / "label.nii.gz", LABELS)
    assert counts == {"a": int((labels == 1).sum()), "b": 1}
    np.testing.assert_array_equal(read_image(out / "label.nii.gz")[0], labels)


def test_float_labels_rounded_or_refused(case):
    src, out, image, labels, geometry = case
    write_image(src / "f.nii.gz", labels.astype(np.float32) * 0.9999, geometry)
    convert_label("c1", src / "f.nii.gz", out / "image.nii.gz", out / "label.nii.gz", LABELS)
    np.testing.assert_array_equal(read_image(out / "label.nii.gz")[0], labels)
    write_image(src / "g.nii.gz", labels.astype(np.float32) * 0.7, geometry)
    with pytest.raises(ConversionError, match="case 'c1'.*g.nii.gz.*non-integer"):
        convert_label("c1", src / "g.nii.gz", out / "image.nii.gz", out / "l2.nii.gz", LABELS)
    assert not (out / "l2.nii.gz").exists()


def test_unknown_label_value_refused(case):
    src, out, _, labels, geometry = case
    bad = labels.copy()
    bad[0, 0, 0] = 7
    write_image(src / "bad.nii.gz", bad, geometry)
    with pytest.raises(ConversionError, match=r"value\(s\) \[7\] are not in the config"):
        convert_label("c1", src / "bad.nii.gz", out / "image.nii.gz", out / "l.nii.gz", LABELS)


def test_geometry_mismatch_refused_or_resampled(case):
    src, out, _, labels, geometry = case
    far = Geometry(geometry.spacing_mm, tuple(np.add(geometry.origin_mm, 50.0)), geometry.direction)
    write_image(src / "far.nii.gz", labels, far)
    with pytest.raises(ConversionError, match="does not match its image"):
        convert_label("c1", src / "far.nii.gz", out / "image.nii.gz", out / "l.nii.gz", LABELS)
    near = Geometry(geometry.spacing_mm, tuple(np.add(geometry.origin_mm, 0.01)), geometry.direction)
    write_image(src / "near.nii.gz", labels, near)
    convert_label("c1", src / "near.nii.gz", out / "image.nii.gz", out / "l.nii.gz", LABELS, LabelOptions())
    np.testing.assert_array_equal(read_image(out / "l.nii.gz")[0], labels)
    shape_wrong = np.zeros((3, 3, 3), np.uint8)
    write_image(src / "small.nii.gz", shape_wrong, geometry)
    with pytest.raises(ConversionError, match=r"shape \(3, 3, 3\) vs \(6, 10, 12\)"):
        convert_label("c1", src / "small.nii.gz", out / "image.nii.gz", out / "l3.nii.gz", LABELS)


def test_nan_image_refused_and_nothing_written(tmp_path, oblique_geometry):
    image = np.zeros((4, 4, 4), np.float32)
    image[1, 1, 1] = np.nan
    write_image(tmp_path / "nan.nii.gz", image, oblique_geometry)
    with pytest.raises(ConversionError, match="case 'x'.*nan.nii.gz.*NaN"):
        convert_image("x", tmp_path / "nan.nii.gz", tmp_path / "out" / "image.nii.gz")
    assert not (tmp_path / "out" / "image.nii.gz").exists()


def test_unknown_file_kind_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConversionError, match="unknown extension"):
        convert_image("x", tmp_path / "notes.txt", tmp_path / "o.nii.gz")
    with pytest.raises(ConversionError, match="no such file"):
        convert_image("x", tmp_path / "nothing.nii.gz", tmp_path / "o.nii.gz")
