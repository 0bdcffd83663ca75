import numpy as np
import pytest
import SimpleITK as sitk

from carve.io import Geometry, ImageReadError, read_image, write_image


def test_round_trip_keeps_values_and_geometry(tmp_path, oblique_geometry):
    array = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    path = write_image(tmp_path / "x.nii.gz", array, oblique_geometry)
    back, geometry = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert geometry.is_close(oblique_geometry, 1e-4, shape=array.shape)
    np.testing.assert_allclose(geometry.spacing_mm, oblique_geometry.spacing_mm, atol=1e-6)


def test_affine_matches_simpleitk_physical_points(tmp_path, oblique_geometry):
    path = write_image(tmp_path / "x.nrrd", np.zeros((4, 5, 6), np.int16), oblique_geometry)
    image = sitk.ReadImage(str(path))
    # array index (a0, a1, a2) is SimpleITK index (a2, a1, a0)
    for idx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        expected = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in idx[::-1]))
        np.testing.assert_allclose(oblique_geometry.index_to_world(np.array([idx]))[0], expected, atol=1e-4)


def test_world_to_index_inverts(oblique_geometry):
    idx = np.array([[1.5, 2.0, -3.0], [0, 0, 0]])
    np.testing.assert_allclose(oblique_geometry.world_to_index(oblique_geometry.index_to_world(idx)), idx, atol=1e-9)


def test_geometry_json_round_trip(oblique_geometry):
    assert Geometry.from_json(oblique_geometry.to_json()) == oblique_geometry


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.nii.gz.*0 bytes"):
        read_image(empty)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageReadError, match="junk.nii.gz"):
        read_image(junk)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.nii")


def test_refuses_rgb_and_4d(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(ImageReadError, match="components"):
        read_image(tmp_path / "rgb.nii.gz")
    vol = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    four = sitk.JoinSeries([vol, vol])
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    with pytest.raises(ImageReadError, match="4D"):
        read_image(tmp_path / "four.nii.gz")


def test_write_is_atomic_no_temporary_left(tmp_path, oblique_geometry):
    write_image(tmp_path / "a.nii.gz", np.ones((2, 2, 2), np.uint8), oblique_geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_channels_round_trip_as_4d(tmp_path, oblique_geometry):
    import nibabel as nib

    from carve.io import read_channels, write_channels

    data = np.random.default_rng(3).normal(size=(3, 4, 5, 6)).astype(np.float32)
    write_channels(tmp_path / "c.nii.gz", data, oblique_geometry)
    assert nib.load(str(tmp_path / "c.nii.gz")).shape == (6, 5, 4, 3)  # NIfTI: x, y, z, channel
    back, geometry = read_channels(tmp_path / "c.nii.gz")
    np.testing.assert_array_equal(back, data)
    assert geometry.is_close(oblique_geometry, 1e-4, data.shape[1:])
    with pytest.raises(ImageReadError, match="4D.*needs the config's `channels`"):
        read_image(tmp_path / "c.nii.gz")
    write_channels(tmp_path / "one.nii.gz", data[:1], oblique_geometry)  # one channel stays 3D
    assert read_image(tmp_path / "one.nii.gz")[0].shape == (4, 5, 6)
    assert read_channels(tmp_path / "one.nii.gz")[0].shape == (1, 4, 5, 6)


def test_stale_temporary_of_a_killed_writer_is_removed(tmp_path, oblique_geometry):
    from carve.io import atomic_write_text

    (tmp_path / ".image.nii.gz.abc123.nii.gz").write_bytes(b"half")  # what a kill -9 mid-write leaves
    (tmp_path / ".notes.txt.xyz").write_bytes(b"half")
    (tmp_path / ".other.nii.gz.abc.nii.gz").write_bytes(b"someone else's")
    write_image(tmp_path / "image.nii.gz", np.zeros((2, 3, 4), np.uint8), oblique_geometry)
    atomic_write_text(tmp_path / "notes.txt", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.nii.gz.abc.nii.gz", "image.nii.gz", "notes.txt"]


def test_written_files_get_the_usual_permissions(tmp_path, oblique_geometry):
    import os

    from carve.io import atomic_write_text

    mask = os.umask(0o022)
    os.umask(mask)
    write_image(tmp_path / "image.nii.gz", np.zeros((2, 3, 4), np.uint8), oblique_geometry)
    atomic_write_text(tmp_path / "notes.txt", "done")
    for name in ("image.nii.gz", "notes.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask
