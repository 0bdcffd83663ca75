"""carve.imaging.dicom: write/read round trips and refusals on small synthetic series (anisotropic, oblique)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from carve.imaging.dicom import DicomError, find_series, read_dicom_series, select_series, write_dicom_series
from carve.imaging.io import Geometry, from_sitk

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # axis 0 -> z, 1 -> y, 2 -> x


def oblique(spacing_mm=(3.0, 0.8, 0.9), origin_mm=(-12.3456, 33.3, -101.25), deg=17.0, axis=(0.3, -0.5, 0.8)):
    rot = Rotation.from_rotvec(np.deg2rad(deg) * np.asarray(axis) / np.linalg.norm(axis)).as_matrix()
    return Geometry(spacing_mm, origin_mm, tuple(map(tuple, rot @ AXIAL)))


def ramp(shape=(6, 10, 12), dtype=np.int16):
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def edit(paths, **changes):
    """Rewrite DICOM files with some header attributes changed."""
    for p in paths:
        ds = pydicom.dcmread(p)
        for key, value in changes.items():
            setattr(ds, key, value(ds) if callable(value) else value)
        ds.save_as(p)


def test_round_trip_oblique_float(tmp_path):
    geo = oblique()
    rng = np.random.default_rng(0)
    arr = rng.normal(500.0, 120.0, (7, 20, 30)).astype(np.float32)
    paths = write_dicom_series(arr, geo, tmp_path, uid_seed="rt")
    assert [p.name for p in paths] == [f"IM{k:04d}.dcm" for k in range(1, 8)]
    back, g = read_dicom_series(tmp_path)
    step = float(pydicom.dcmread(paths[0]).RescaleSlope)
    assert back.dtype == np.float32 and back.shape == arr.shape
    assert np.abs(back - arr).max() <= step / 2 + 1e-3
    assert np.abs(g.affine - geo.affine).max() < 1e-6
    assert g.spacing_mm == pytest.approx(geo.spacing_mm, abs=1e-4)
    # an independent reader (SimpleITK/GDCM) agrees on geometry and values
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    ref, ref_geo = from_sitk(reader.Execute())
    assert np.abs(ref_geo.affine - geo.affine).max() < 1e-4
    assert np.abs(ref - back).max() < 1e-3


def test_round_trip_ct_hounsfield_exact(tmp_path):
    geo = oblique(spacing_mm=(2.5, 0.7, 0.7), deg=4.0)
    arr = (ramp((5, 8, 9), np.int32) * 7 - 1024).astype(np.int16)
    paths = write_dicom_series(arr, geo, tmp_path, modality="CT", rescale_slope=1, rescale_intercept=-1024)
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and float(ds.RescaleIntercept) == -1024
    assert ds.PatientName == "SYNTHETIC^DEMO" and ds.PatientID == "DEMO"
    back, g = read_dicom_series(tmp_path)
    assert back.dtype == np.int16 and np.array_equal(back, arr)
    assert g.is_close(geo, 1e-4, shape=arr.shape)


def test_writing_is_deterministic_and_seeded(tmp_path):
    arr, geo = ramp(), oblique()
    a = write_dicom_series(arr, geo, tmp_path / "a", uid_seed="case-1")
    b = write_dicom_series(arr, geo, tmp_path / "b", uid_seed="case-1")
    c = write_dicom_series(arr, geo, tmp_path / "c", uid_seed="case-2")
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert pydicom.dcmread(a[0]).SeriesInstanceUID != pydicom.dcmread(c[0]).SeriesInstanceUID
    write_dicom_series(arr[:3], geo, tmp_path / "a", uid_seed="case-1")  # shorter series: stale files go
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]


def test_axis_against_normal_reads_back_reversed_at_same_world_positions(tmp_path):
    geo = oblique()
    d = geo.direction_matrix.copy()
    flipped = Geometry(geo.spacing_mm, geo.origin_mm, tuple(map(tuple, d * [-1, 1, 1])))
    arr = ramp()
    write_dicom_series(arr, flipped, tmp_path)
    back, g = read_dicom_series(tmp_path)
    assert np.array_equal(back, arr[::-1])
    last = flipped.index_to_world([arr.shape[0] - 1, 0, 0])
    assert np.allclose(g.index_to_world([0, 0, 0]), last, atol=1e-6)


def test_sorting_independent_of_file_names_and_layout(tmp_path):
    arr, geo = ramp(), oblique()
    paths = write_dicom_series(arr, geo, tmp_path / "w")
    rng = np.random.default_rng(3)
    for i, k in enumerate(rng.permutation(len(paths))):  # shuffled names, nested, with and without .dcm
        target = tmp_path / "shuffled" / f"sub{i % 2}" / (f"x{k:02d}" + (".dcm" if i % 3 else ""))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[i], target)
    (tmp_path / "shuffled" / "notes.txt").write_text("not dicom")
    (tmp_path / "shuffled" / "sub0" / "DICOMDIR").write_bytes(b"\0" * 200)
    back, g = read_dicom_series(tmp_path / "shuffled")
    assert np.array_equal(back, arr)
    assert g.is_close(geo, 1e-6, shape=arr.shape)
    (series,) = find_series(tmp_path / "shuffled")
    assert series.n_files == 6 and series.n_frames == 6 and not series.multiframe
    assert (series.rows, series.columns) == (10, 12)


def test_missing_middle_slice_refused_or_interpolated(tmp_path):
    geo = oblique(deg=9.0)
    arr = (np.arange(6)[:, None, None] * 100 + np.zeros((6, 5, 7))).astype(np.int16)  # linear along the slices
    paths = write_dicom_series(arr, geo, tmp_path)
    paths[2].unlink()
    with pytest.raises(DicomError, match="missing slices") as err:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(err.value) and "uneven" in str(err.value)
    back, g = read_dicom_series(tmp_path, uneven_spacing="resample")
    assert np.array_equal(back, arr)  # linear between slices 1 and 3 restores slice 2 exactly
    assert g.is_close(geo, 1e-6, shape=arr.shape)


def test_mixed_orientations_refused(tmp_path):
    write_dicom_series(ramp(), oblique(), tmp_path / "a", uid_seed="a")
    b = write_dicom_series(ramp(), oblique(deg=40.0), tmp_path / "b", uid_seed="b")
    uid = pydicom.dcmread(tmp_path / "a" / "IM0001.dcm").SeriesInstanceUID
    edit(b, SeriesInstanceUID=uid)
    with pytest.raises(DicomError, match="mixed orientations"):
        read_dicom_series(tmp_path)


def test_single_slice_and_two_slices(tmp_path):
    write_dicom_series(ramp((1, 4, 5)), oblique(), tmp_path / "one")
    with pytest.raises(DicomError, match="only 1 slice"):
        read_dicom_series(tmp_path / "one")
    write_dicom_series(ramp((2, 4, 5)), oblique(), tmp_path / "two")
    with pytest.raises(DicomError, match="only 2 slice"):
        read_dicom_series(tmp_path / "two")
    assert read_dicom_series(tmp_path / "two", min_slices=2)[0].shape == (2, 4, 5)


def test_several_images_per_position_refused(tmp_path):
    write_dicom_series(ramp(), oblique(), tmp_path / "echo1", uid_seed="e1")
    b = write_dicom_series(ramp() + 1, oblique(), tmp_path / "echo2", uid_seed="e2")
    edit(b, SeriesInstanceUID=pydicom.dcmread(tmp_path / "echo1" / "IM0001.dcm").SeriesInstanceUID)
    with pytest.raises(DicomError, match="12 images at only 6 slice position"):
        read_dicom_series(tmp_path)


def test_select_series(tmp_path):
    write_dicom_series(ramp((4, 6, 6)), oblique(), tmp_path / "small", series_description="T2 small", uid_seed="s")
    write_dicom_series(ramp((8, 6, 6)), oblique(), tmp_path / "big", series_description="T1 big", uid_seed="b")
    series = find_series(tmp_path)
    assert [s.description for s in series] == ["T1 big", "T2 small"]
    small = next(s for s in series if s.description == "T2 small")
    assert select_series(series).description == "T1 big"
    assert select_series(series, uid=small.uid) == small
    assert select_series(series, description_pattern=r"^T2") == small
    with pytest.raises(DicomError) as err:
        select_series(series, description_pattern="FLAIR", folder=tmp_path)
    assert str(tmp_path) in str(err.value) and small.uid in str(err.value) and "4 files" in str(err.value)
    assert read_dicom_series(tmp_path, description_pattern="T2")[0].shape == (4, 6, 6)
    assert read_dicom_series(tmp_path)[0].shape == (8, 6, 6)


def test_enhanced_multiframe_matches_single_frame(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    arr, geo = ramp(), oblique()
    paths = write_dicom_series(arr, geo, tmp_path / "classic")
    mf = LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(p) for p in paths],
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=["mf"]),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(entropy_srcs=["mf", "1"]),
        instance_number=1,
    )
    (tmp_path / "enhanced").mkdir()
    mf.save_as(tmp_path / "enhanced" / "mf.dcm")
    (series,) = find_series(tmp_path / "enhanced")
    assert series.multiframe and series.n_files == 1 and series.n_frames == 6
    back, g = read_dicom_series(tmp_path / "enhanced")
    assert np.array_equal(back, arr) and g.is_close(geo, 1e-6, shape=arr.shape)


def test_colour_and_inconsistent_sizes_refused_from_headers(tmp_path):
    paths = write_dicom_series(ramp(), oblique(), tmp_path / "rgb")
    edit(paths, SamplesPerPixel=3, PhotometricInterpretation="RGB")
    with pytest.raises(DicomError, match="RGB"):
        read_dicom_series(tmp_path / "rgb")
    paths = write_dicom_series(ramp(), oblique(), tmp_path / "size")
    edit(paths[3:4], Rows=5)
    with pytest.raises(DicomError, match="inconsistent image size"):
        read_dicom_series(tmp_path / "size")


def test_absurd_sizes_refused_before_decoding(tmp_path, monkeypatch):
    import carve.imaging.dicom

    paths = write_dicom_series(ramp(), oblique(), tmp_path)
    edit(paths, Rows=60000, Columns=60000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded before the header checks")

    monkeypatch.setattr(carve.imaging.dicom, "_decode", no_decoding)
    with pytest.raises(DicomError, match="GiB of pixel data"):
        read_dicom_series(tmp_path)


def test_gantry_tilt_refused_or_resampled(tmp_path, caplog):
    geo = oblique(spacing_mm=(2.0, 1.0, 1.0), deg=6.0)
    d = geo.direction_matrix
    shear_mm = 0.5  # in-plane shift per slice along the column direction: atan(0.5 / 2) = 14 degrees of tilt
    shape = (5, 12, 10)
    a_vec, c0 = np.array([0.8, -0.5, 1.7]), 300.0  # values are a linear function of the world position

    def world(k, i, j):
        return geo.origin_mm + k * 2.0 * d[:, 0] + (i + k * shear_mm) * d[:, 1] + j * d[:, 2]

    k, i, j = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    pts = np.stack([world(*ix) for ix in zip(k.ravel(), i.ravel(), j.ravel(), strict=True)])
    arr = (pts @ a_vec + c0).reshape(shape).astype(np.float32)
    paths = write_dicom_series(arr, geo, tmp_path)
    edit(paths, ImagePositionPatient=lambda ds: [f"{v:.10f}" for v in world(int(ds.InstanceNumber) - 1, 0, 0)])
    with pytest.raises(DicomError, match=r"gantry tilt of about 14\.04 degrees"):
        read_dicom_series(tmp_path, tilt="refuse")
    with caplog.at_level(logging.INFO, logger="carve.imaging.dicom"):
        back, g = read_dicom_series(tmp_path, tilt="resample")
    assert "resampled onto an orthogonal grid" in caplog.text
    assert back.shape == (5, 12 + 2, 10)  # 4 slices x 0.5 mm of shift widen the grid by 2 rows
    gd = g.direction_matrix
    assert np.abs(gd.T @ gd - np.eye(3)).max() < 1e-9
    expected = g.index_to_world(np.argwhere(np.ones(back.shape))) @ a_vec + c0
    inside = np.zeros(back.shape, bool)
    for kk in range(5):  # the rows of each output slice covered by its shifted input slice
        inside[kk, int(np.ceil(kk * shear_mm)) : int(np.floor(kk * shear_mm + 11)) + 1] = True
    assert np.all(back[~inside] == back.min())  # outside: filled with the minimum
    step = float(pydicom.dcmread(paths[0]).RescaleSlope)
    assert np.abs(back[inside] - expected.reshape(back.shape)[inside]).max() < step + 1e-3


def test_patient_identity_never_logged(tmp_path, caplog):
    paths = write_dicom_series(ramp(), oblique(), tmp_path)
    edit(paths, PatientName="DOE^JANE", PatientID="PID-4711", PatientBirthDate="19700101")
    with caplog.at_level(logging.DEBUG):
        read_dicom_series(tmp_path)
    assert caplog.text and not any(s in caplog.text for s in ("DOE", "JANE", "PID-4711", "19700101"))


def test_multiframe_without_per_frame_positions_refused(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    paths = write_dicom_series(ramp(), oblique(), tmp_path / "classic")
    mf = LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(p) for p in paths],
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=["legacy"]),
        series_number=3,
        sop_instance_uid=pydicom.uid.generate_uid(entropy_srcs=["legacy", "1"]),
        instance_number=1,
    )
    mf.ImagePositionPatient = mf.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    for group in mf.PerFrameFunctionalGroupsSequence:  # one position for the whole file: frames cannot be placed
        del group.PlanePositionSequence
    (tmp_path / "legacy").mkdir()
    mf.save_as(tmp_path / "legacy" / "mf.dcm")
    with pytest.raises(DicomError, match="mf.dcm frame 1 has no usable ImagePositionPatient"):
        read_dicom_series(tmp_path / "legacy")
