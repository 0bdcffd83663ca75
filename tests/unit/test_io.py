import numpy as np
import pytest
import SimpleITK as sitk

from carve.imaging.io import Geometry, ImageReadError, read_image, write_image


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

    from carve.imaging.io import read_channels, write_channels

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
    from carve.imaging.io import atomic_write_text

    (tmp_path / ".image.nii.gz.abc123.nii.gz").write_bytes(b"half")  # what a kill -9 mid-write leaves
    (tmp_path / ".notes.txt.xyz").write_bytes(b"half")
    (tmp_path / ".other.nii.gz.abc.nii.gz").write_bytes(b"someone else's")
    write_image(tmp_path / "image.nii.gz", np.zeros((2, 3, 4), np.uint8), oblique_geometry)
    atomic_write_text(tmp_path / "notes.txt", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.nii.gz.abc.nii.gz", "image.nii.gz", "notes.txt"]


def test_written_files_get_the_usual_permissions(tmp_path, oblique_geometry):
    import os

    from carve.imaging.io import atomic_write_text

    mask = os.umask(0o022)
    os.umask(mask)
    write_image(tmp_path / "image.nii.gz", np.zeros((2, 3, 4), np.uint8), oblique_geometry)
    atomic_write_text(tmp_path / "notes.txt", "done")
    for name in ("image.nii.gz", "notes.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


# ---- NIfTI placement: carve refuses what ITK would read elsewhere than the header puts it ---------------------------

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS (nibabel, NIfTI) to LPS (ITK, carve)


def _affine(spacing: tuple[float, float, float], origin: tuple[float, float, float], matrix=None) -> np.ndarray:
    """4x4 RAS affine with ``matrix`` (unit columns, default identity) scaled by ``spacing`` per NIfTI axis."""
    a = np.eye(4)
    a[:3, :3] = (np.eye(3) if matrix is None else np.asarray(matrix, float)) * np.asarray(spacing)[None, :]
    a[:3, 3] = origin
    return a


def _write_nifti(
    path,
    sform: np.ndarray | None,
    qform: np.ndarray | None = None,
    sform_code: int = 1,
    qform_code: int = 1,
    zooms: tuple[float, float, float] | None = None,
    shape: tuple[int, ...] = (6, 7, 8),
):
    """A NIfTI written with nibabel with exactly these header fields (a form that is None gets code 0)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), None)
    if qform is not None:
        image.set_qform(qform, code=qform_code)
    if sform is not None:
        image.set_sform(sform, code=sform_code)
    image.header["qform_code"] = qform_code if qform is not None else 0
    image.header["sform_code"] = sform_code if sform is not None else 0
    given = sform if sform is not None else qform
    if zooms is None and given is not None:
        zooms = tuple(np.linalg.norm(given[:3, :3], axis=0))
    if zooms is not None:
        image.header.set_zooms(tuple(zooms) + tuple(image.header.get_zooms()[3:]))
    nib.save(image, str(path))
    return path


def _header_corners_lps(path) -> tuple[np.ndarray, np.ndarray]:
    """Carve array indices of the corner voxels and the LPS positions nibabel's affine gives them."""
    import nibabel as nib

    image = nib.load(str(path))
    shape = image.shape[:3]
    ijk = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    lps = (np.c_[ijk, np.ones(len(ijk))] @ (LPS @ image.affine).T)[:, :3]
    return ijk[:, ::-1], lps  # carve's array order is (k, j, i)


def _sheared() -> np.ndarray:
    a = _affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    a[0, 1] = 0.5  # the j axis leans towards x: 9.5 degrees off perpendicular to i
    return a


@pytest.mark.parametrize("with_qform", [False, True], ids=["sform-only", "sform-and-qform"])
def test_sheared_nifti_is_refused_naming_the_file(tmp_path, with_qform) -> None:
    from carve.imaging.io import read_channels

    qform = _affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0)) if with_qform else None
    path = _write_nifti(tmp_path / "sheared.nii.gz", _sheared(), qform)
    if with_qform:  # ITK alone reads it without a word, by the qform: the volume silently moved
        image = sitk.ReadImage(str(path))
        assert not Geometry.from_sitk(image).is_close(Geometry(**_header_geometry(path)), 0.5, (8, 7, 6))
    for read in (read_image, read_channels):
        with pytest.raises(ImageReadError, match=r"sheared\.nii\.gz: .*sform \(sform_code 1\) is not orthonormal") as e:
            read(path)
        assert "sheared (skewed) 9.46 degrees" in str(e.value)
        assert ("by its qform (qform_code 1)" in str(e.value)) == with_qform
        assert "resample the image onto an orthogonal grid" in str(e.value).lower()


def _header_geometry(path) -> dict:
    """Geometry arguments (carve's array order, LPS) of a NIfTI's nibabel affine, whatever its shear."""
    import nibabel as nib

    a = LPS @ nib.load(str(path)).affine
    m = a[:3, :3][:, ::-1]
    spacing = np.linalg.norm(m, axis=0)
    return {"spacing_mm": tuple(spacing), "origin_mm": tuple(a[:3, 3]), "direction": tuple(map(tuple, m / spacing))}


def test_sheared_nifti_is_refused_even_when_itk_is_permissive(tmp_path, monkeypatch) -> None:
    """ITK_NIFTI_SFORM_PERMISSIVE makes ITK coerce a sheared sform to an orthogonal one with a console warning."""
    path = _write_nifti(tmp_path / "sheared.nii", _sheared())
    monkeypatch.setenv("ITK_NIFTI_SFORM_PERMISSIVE", "1")
    coerced = Geometry.from_sitk(sitk.ReadImage(str(path)))  # ITK reads it, on a grid the header does not give
    ijk, lps = _header_corners_lps(path)
    assert np.abs(coerced.index_to_world(ijk) - lps).max() > 0.5
    with pytest.raises(ImageReadError, match=r"sheared\.nii: .*not orthonormal.*orthogonal grid.*up to [\d.]+ mm"):
        read_image(path)


@pytest.mark.parametrize("forms", ["sform+qform", "sform", "qform"])
def test_oblique_anisotropic_nifti_is_read_where_its_header_puts_it(tmp_path, forms) -> None:
    from conftest import rotation

    affine = _affine((0.7, 1.3, 2.9), (-40.5, 12.25, 88.0), rotation((0.3, -1.0, 2.0), 23.0))
    sform = affine if "sform" in forms else None
    qform = affine if "qform" in forms else None
    path = _write_nifti(tmp_path / "oblique.nii.gz", sform, qform, sform_code=2, shape=(9, 11, 5))
    array, geometry = read_image(path)
    assert array.shape == (5, 11, 9)
    ijk, lps = _header_corners_lps(path)
    np.testing.assert_allclose(geometry.index_to_world(ijk), lps, atol=1e-4)
    np.testing.assert_allclose(geometry.spacing_mm, (2.9, 1.3, 0.7), rtol=1e-6)


def test_scanner_noise_in_the_axes_is_accepted(tmp_path) -> None:
    """A sform orthonormal to only 3e-4 (direction cosines written with few decimals): ITK reads the qform there,
    a few micrometres away, which is within the tolerance."""
    from conftest import rotation

    noisy = _affine((0.5, 0.5, 1.2), (100.0, -80.0, 20.0), rotation((1.0, 1.0, 0.0), 12.0))
    noisy[:3, 1] += 3e-4 * 0.5 * noisy[:3, 0] / np.linalg.norm(noisy[:3, 0])
    path = _write_nifti(tmp_path / "noisy.nii.gz", noisy, noisy, sform_code=2, shape=(300, 300, 40))
    _, geometry = read_image(path)
    ijk, lps = _header_corners_lps(path)
    off = np.abs(geometry.index_to_world(ijk) - lps).max()
    assert 1e-3 < off < 0.1  # ITK did not read the sform exactly, but close enough to be the same grid


def test_sform_and_qform_that_disagree_are_refused_when_itk_takes_the_qform(tmp_path) -> None:
    import nibabel as nib

    sform = _affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    qform = _affine((2.0, 3.0, 4.0), (15.0, 20.0, 30.0))  # 5 mm along x
    path = _write_nifti(tmp_path / "twoforms.nii.gz", sform, qform, sform_code=2, qform_code=1)
    with pytest.raises(ImageReadError, match=r"twoforms\.nii\.gz: .*up to 5 mm from where its header's sform") as e:
        read_image(path)
    assert "ITK took the qform (qform_code 1), which disagrees with the sform by up to 5 mm" in str(e.value)
    assert "img.set_qform(img.get_sform())" in str(e.value)
    image = nib.load(str(path))  # the fix the message suggests
    image.set_qform(image.get_sform())
    nib.save(image, str(path))
    _, geometry = read_image(path)
    ijk, lps = _header_corners_lps(path)
    np.testing.assert_allclose(geometry.index_to_world(ijk), lps, atol=1e-4)
    assert geometry.origin_mm[0] == pytest.approx(-10.0)  # the sform's x (RAS 10 is LPS -10), not the qform's


def test_sform_and_qform_that_disagree_are_read_by_the_sform_with_a_warning(tmp_path, caplog) -> None:
    sform = _affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    qform = _affine((2.0, 3.0, 4.0), (15.0, 20.0, 30.0))
    path = _write_nifti(tmp_path / "twoforms.nii.gz", sform, qform, sform_code=1, qform_code=1)
    with caplog.at_level("WARNING", logger="carve.imaging.io"):
        _, geometry = read_image(path)
    ijk, lps = _header_corners_lps(path)
    np.testing.assert_allclose(geometry.index_to_world(ijk), lps, atol=1e-4)
    assert "sform and qform disagree by up to 5 mm" in caplog.text and "twoforms.nii.gz" in caplog.text


def test_pixdim_that_disagrees_with_the_sform_is_refused(tmp_path) -> None:
    sform = _affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    path = _write_nifti(tmp_path / "scales.nii.gz", sform, None, zooms=(1.0, 1.0, 1.0))
    with pytest.raises(
        ImageReadError, match=r"scales\.nii\.gz: ITK.*voxel size \(1\.0, 1\.0, 1\.0\) mm \(from pixdim\)"
    ):
        read_image(path)


def test_header_without_placement_is_read_as_before(tmp_path) -> None:
    path = _write_nifti(tmp_path / "bare.nii.gz", None, None, zooms=(0.5, 0.6, 0.7))
    _, geometry = read_image(path)
    assert geometry.spacing_mm == pytest.approx((0.7, 0.6, 0.5))
    assert geometry.origin_mm == (0.0, 0.0, 0.0)
