import numpy as np
import pytest

from carve.imaging.convert import ConversionError, LabelOptions, convert_image, convert_label
from carve.imaging.io import Geometry, read_image, write_image

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


@pytest.fixture
def study(tmp_path):
    """A DICOM study folder with a T1 and a coarser, shifted T2 series (nested folders) and their arrays."""
    from carve.export.dicom_write import write_dicom_series

    rng = np.random.default_rng(5)
    axes = ((-1, 0, 0), (0, 1, 0), (0, 0, 1))  # array axis 0 along the DICOM slice normal
    g1 = Geometry((3.0, 1.0, 1.0), (9.0, 0.0, 0.0), axes)
    g2 = Geometry((3.0, 2.0, 2.0), (9.0, 0.5, 0.5), axes)
    t1 = rng.integers(0, 1000, size=(4, 12, 10)).astype(np.int16)
    t2 = np.tile(np.arange(5, dtype=np.int16) * 100, (4, 6, 1))  # a ramp along x
    root = tmp_path / "study"
    write_dicom_series(t1, g1, root / "a" / "t1", series_description="T1 MPRAGE", uid_seed="t1", series_number=1)
    write_dicom_series(t2, g2, root / "b" / "t2", series_description="T2 axial", uid_seed="t2", series_number=2)
    return root, t1, t2, g1


def test_study_folder_feeds_two_channels(study, tmp_path, caplog):
    from carve.imaging.convert import ChannelSpec
    from carve.imaging.io import read_channels

    root, t1, t2, g1 = study
    channels = [ChannelSpec("T1", series_description="T1"), ChannelSpec("T2", series_description="T2")]
    with caplog.at_level("INFO"):
        convert_image("s1", root, tmp_path / "out.nii.gz", channels=channels)
    data, geometry = read_channels(tmp_path / "out.nii.gz")
    assert data.shape == (2, *t1.shape) and geometry.is_close(g1, 1e-4, t1.shape)
    np.testing.assert_array_equal(data[0], t1)
    # T2 was resampled (linear) onto T1's 1 mm grid: the ramp of 100 per 2 mm is 50 per mm inside
    inner = data[1][:, 2:-2, 1:7]
    np.testing.assert_allclose(np.diff(inner, axis=2), 50.0, atol=1e-3)
    assert "channel 'T2'" in caplog.text and "resampled onto the first channel's grid" in caplog.text
    # the sheet's per-row choice (a UID) wins over the channel's pattern
    import pydicom

    uid_t2 = pydicom.dcmread(next((root / "b" / "t2").glob("*.dcm"))).SeriesInstanceUID
    convert_image("s1", root, tmp_path / "swap.nii.gz", channels=channels, series=[uid_t2, "T1"])
    swapped, _ = read_channels(tmp_path / "swap.nii.gz")
    assert swapped[0].shape == t2.shape and swapped[1].shape == t2.shape
    np.testing.assert_array_equal(swapped[0], t2)


def test_single_channel_series_choice_from_sheet(study, tmp_path):
    root, t1, t2, _ = study
    convert_image("s1", root, tmp_path / "t2.nii.gz", series=["T2 ax"])
    np.testing.assert_array_equal(read_image(tmp_path / "t2.nii.gz")[0], t2)
    with pytest.raises(ConversionError, match="case 's1'.*FLAIR"):
        convert_image("s1", root, tmp_path / "none.nii.gz", series=["FLAIR"])
    assert not (tmp_path / "none.nii.gz").exists()


def test_4d_file_gives_one_volume_per_channel(tmp_path, oblique_geometry):
    from carve.imaging.convert import ChannelSpec
    from carve.imaging.io import read_channels, write_channels

    data = np.random.default_rng(1).normal(size=(3, 4, 5, 6)).astype(np.float32)
    write_channels(tmp_path / "in.nii.gz", data, oblique_geometry)
    names = [ChannelSpec(n) for n in ("a", "b", "c")]
    convert_image("m1", tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", channels=names)
    np.testing.assert_array_equal(read_channels(tmp_path / "out.nii.gz")[0], data)
    with pytest.raises(ConversionError, match="case 'm1'.*in.nii.gz: has 3 volumes but the config names 2 channels"):
        convert_image("m1", tmp_path / "in.nii.gz", tmp_path / "bad.nii.gz", channels=names[:2])
    with pytest.raises(ConversionError, match="case 'm1'.*4D.*channels"):
        convert_image("m1", tmp_path / "in.nii.gz", tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()
    # one file per channel (sheet columns image_<name>); a channel far away in space is refused
    write_image(tmp_path / "a.nii.gz", data[0], oblique_geometry)
    far = Geometry(oblique_geometry.spacing_mm, (500.0, 500.0, 500.0), oblique_geometry.direction)
    write_image(tmp_path / "b.nii.gz", data[1], far)
    with pytest.raises(ConversionError, match="channel 'b' does not overlap the first channel"):
        convert_image("m1", [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], tmp_path / "bad.nii.gz", channels=names[:2])
    assert not (tmp_path / "bad.nii.gz").exists()


def test_label_values_mapped_into_the_runs_labels(case):
    """A dataset of several: its own values 1, 2 become the union's 3, 1 (counts by its own names)."""
    src, out, _, labels, _ = case
    counts = convert_label(
        "c1", src / "label.nii.gz", out / "image.nii.gz", out / "label.nii.gz", LABELS, to_values={1: 3, 2: 1}
    )
    assert counts == {"a": int((labels == 1).sum()), "b": 1}
    mapped = read_image(out / "label.nii.gz")[0]
    np.testing.assert_array_equal(mapped == 3, labels == 1)
    np.testing.assert_array_equal(mapped == 1, labels == 2)
    assert set(np.unique(mapped)) == {0, 1, 3}


def _sheared_nifti(path, shape: tuple[int, ...] = (6, 7, 8)):
    """A NIfTI (nibabel) whose sform leans its j axis 9.5 degrees towards x, with an orthogonal qform beside it."""
    import nibabel as nib

    sform = np.diag([2.0, 3.0, 4.0, 1.0])
    sform[:3, 3] = (10.0, 20.0, 30.0)
    qform = sform.copy()
    sform[0, 1] = 0.5
    image = nib.Nifti1Image(np.ones(shape, np.float32), None)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=1)
    image.header.set_zooms(tuple(np.linalg.norm(sform[:3, :3], axis=0)) + tuple(image.header.get_zooms()[3:]))
    nib.save(image, str(path))
    return path


def test_sheared_image_refused_naming_case_and_file_nothing_written(tmp_path) -> None:
    from carve.imaging.convert import ChannelSpec

    _sheared_nifti(tmp_path / "sheared.nii.gz")
    out = tmp_path / "out" / "image.nii.gz"
    with pytest.raises(ConversionError, match=r"^case 's1': \S*sheared\.nii\.gz: .*sform.*is not orthonormal"):
        convert_image("s1", tmp_path / "sheared.nii.gz", out)
    assert not out.exists()
    _sheared_nifti(tmp_path / "sheared4d.nii.gz", shape=(6, 7, 8, 2))  # the 4D path (one volume per channel)
    with pytest.raises(ConversionError, match=r"^case 's2': \S*sheared4d\.nii\.gz: .*not orthonormal"):
        convert_image("s2", tmp_path / "sheared4d.nii.gz", out, channels=[ChannelSpec("a"), ChannelSpec("b")])
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sheared_label_refused_naming_case_and_file_nothing_written(case) -> None:
    src, out, image, labels, geometry = case
    _sheared_nifti(src / "sheared_label.nii.gz", shape=image.shape[::-1])
    with pytest.raises(ConversionError, match=r"^case 'c1': \S*sheared_label\.nii\.gz: .*not orthonormal"):
        convert_label("c1", src / "sheared_label.nii.gz", out / "image.nii.gz", out / "label.nii.gz", LABELS)
    assert not (out / "label.nii.gz").exists()


def test_sform_qform_disagreement_refused_naming_case(tmp_path) -> None:
    import nibabel as nib

    sform = np.diag([2.0, 3.0, 4.0, 1.0])
    qform = sform.copy()
    qform[0, 3] = 5.0
    image = nib.Nifti1Image(np.ones((6, 7, 8), np.int16), None)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)  # ITK reads the qform of such a header, nibabel (and most tools) the sform
    image.header.set_zooms((2.0, 3.0, 4.0))
    nib.save(image, str(tmp_path / "two.nii.gz"))
    with pytest.raises(ConversionError, match=r"^case 'q1': \S*two\.nii\.gz: .*ITK took the qform.*by up to 5 mm"):
        convert_image("q1", tmp_path / "two.nii.gz", tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()
