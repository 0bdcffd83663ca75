"""carve.export.dicom_export on sources that lack type-2 or optional attributes, validated with dciodvfy (dicom3tools).

The sources are synthetic series written by :func:`carve.imaging.dicom.write_dicom_series` and then stripped or
spoiled with
pydicom the way anonymisers leave real series (see tests/realdata/test_dicom_export_real.py for those).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import assert_dciodvfy_clean
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.uid import ImplicitVRLittleEndian
from scipy.spatial.transform import Rotation

from carve.export.dicom_export import write_dicom_seg, write_rtstruct
from carve.imaging.dicom import DicomError, read_dicom_series, write_dicom_series
from carve.imaging.dicom_labels import read_label_object
from carve.imaging.io import Geometry

NAMES = {1: "liver", 2: "lesion"}
SHAPE = (5, 24, 20)
# Type-2 Patient/Study attributes (and type-2 equipment, series and image ones) that anonymisers remove
STRIPPED = ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDate")
STRIPPED += ("StudyTime", "Manufacturer", "PositionReferenceIndicator", "SliceThickness", "SeriesNumber")


# ---- sources ----------------------------------------------------------------------------------------------------
def synthetic_series(folder: Path, edit: Callable[[pydicom.Dataset], None] | None = None) -> list[Path]:
    """A 5-slice axial MR series in ``folder``; ``edit`` changes every file's dataset (rewritten with pydicom)."""
    geometry = Geometry((3.0, 1.25, 1.5), (-20.0, 14.0, 31.0), tuple(map(tuple, np.eye(3))))
    image = np.random.default_rng(7).integers(0, 300, SHAPE).astype(np.int16)
    paths = write_dicom_series(image, geometry, folder, uid_seed=f"export {folder.name}")
    for path in paths if edit is not None else []:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=False)
    return paths


def strip_type2(ds: pydicom.Dataset) -> None:
    for keyword in STRIPPED:
        delattr(ds, keyword)
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-4711"


def box_labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:4, 4:14, 3:12] = 1
    labels[2:5, 15:20, 12:18] = 2
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def export_both(folder: Path, out: Path, labels: np.ndarray) -> tuple[Path, Path]:
    seg = write_dicom_seg(labels, folder, NAMES, out / "seg.dcm")
    rt = write_rtstruct(labels, folder, NAMES, out / "rt.dcm")
    return seg, rt


# ---- tests ------------------------------------------------------------------------------------------------------
def test_objects_from_a_complete_series_pass_dciodvfy(tmp_path: Path) -> None:
    """The baseline: a series carve wrote itself (every attribute present) gives valid SEG and RTSTRUCT."""
    folder = tmp_path / "series"
    synthetic_series(folder)
    image, grid = read_dicom_series(folder)
    labels = box_labels(image.shape)
    seg, rt = export_both(folder, tmp_path, labels)
    assert_dciodvfy_clean(seg, "SEG")
    assert_dciodvfy_clean(rt, "RTSTRUCT")
    np.testing.assert_array_equal(read_label_object(seg, image.shape, grid, NAMES), labels)


def test_source_without_type2_attributes_exports_valid_seg_and_rtstruct(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Used to fail: "cannot build a DICOM-SEG: 'FileDataset' object has no attribute 'PatientBirthDate'"."""
    folder = tmp_path / "stripped"
    paths = synthetic_series(folder, strip_type2)
    assert "PatientBirthDate" not in pydicom.dcmread(paths[0])  # the source really lacks them
    image, grid = read_dicom_series(folder)
    labels = box_labels(image.shape)
    with caplog.at_level(logging.DEBUG):
        seg_path, rt_path = export_both(folder, tmp_path, labels)
    source = pydicom.dcmread(paths[0])
    for path, modality in ((seg_path, "SEG"), (rt_path, "RTSTRUCT")):
        assert_dciodvfy_clean(path, modality)
        out = pydicom.dcmread(path)
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
            assert keyword in out and out[keyword].is_empty, f"{modality} {keyword}: type 2, present and empty"
        assert "StudyDate" in out and "StudyTime" in out and "PositionReferenceIndicator" in out
        assert str(out.PatientName) == "Doe^Jane" and out.PatientID == "PID-4711"  # copied, never invented
        assert out.StudyInstanceUID == source.StudyInstanceUID
        assert out.FrameOfReferenceUID == source.FrameOfReferenceUID
    np.testing.assert_array_equal(read_label_object(seg_path, image.shape, grid, NAMES), labels)
    back = read_label_object(rt_path, image.shape, grid, NAMES)
    assert min(dice(back == v, labels == v) for v in NAMES) > 0.95
    assert "type-2 attribute(s) AccessionNumber, PatientBirthDate" in caplog.text
    assert "Doe^Jane" not in caplog.text and "PID-4711" not in caplog.text


def test_invalid_patient_values_are_emptied_or_left_out_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def spoil(ds: pydicom.Dataset) -> None:
        with config.disable_value_validation():
            ds.PatientName, ds.PatientID = "SECRETNAME", "SECRET-ID-99"  # one component: highdicom quotes it
            ds.PatientBirthDate = "1970"  # not a DA
            ds.PatientSex = "X"  # not M, F or O
            ds.PatientAge = "42Y"  # AS without its leading zero
        # not a DS (type 3): stored as text, read back (implicit VR) as an invalid DS
        ds[0x00101030] = DataElement(0x00101030, "LO", "eighty")
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO 2022 IR 100"  # code extensions with a single repertoire

    folder = tmp_path / "spoiled"
    paths = synthetic_series(folder, spoil)
    assert pydicom.dcmread(paths[0])["PatientWeight"].VR == "DS"
    image, _ = read_dicom_series(folder)
    labels = box_labels(image.shape)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg_path, rt_path = export_both(folder, tmp_path, labels)
    seg = pydicom.dcmread(seg_path)
    assert seg.PatientBirthDate == "" and seg.PatientSex == "" and "PatientWeight" not in seg
    assert seg.PatientAge == "042Y" and seg.SpecificCharacterSet == "ISO_IR 100"
    assert str(seg.PatientName) == "SECRETNAME" and seg.PatientID == "SECRET-ID-99"
    assert "PatientBirthDate, PatientSex, PatientWeight are not valid DICOM" in caplog.text
    said = caplog.text + "\n".join(str(w.message) for w in caught)
    for secret in ("SECRETNAME", "SECRET-ID-99", "1970", "eighty"):
        assert secret not in said, f"{secret} appears in a log message or warning"
    for path, modality in ((seg_path, "SEG"), (rt_path, "RTSTRUCT")):
        assert_dciodvfy_clean(path, modality)


def test_missing_frame_of_reference_is_derived_and_shared_by_seg_and_rtstruct(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "no_for"
    synthetic_series(folder, lambda ds: delattr(ds, "FrameOfReferenceUID"))
    image, grid = read_dicom_series(folder)
    labels = box_labels(image.shape)
    with caplog.at_level(logging.WARNING, logger="carve.imaging.dicom"):
        seg_path, rt_path = export_both(folder, tmp_path, labels)
    assert "the source has no FrameOfReferenceUID" in caplog.text
    seg, rt = pydicom.dcmread(seg_path), pydicom.dcmread(rt_path)
    assert seg.FrameOfReferenceUID and seg.FrameOfReferenceUID == rt.FrameOfReferenceUID
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == seg.FrameOfReferenceUID
    assert all(r.ReferencedFrameOfReferenceUID == seg.FrameOfReferenceUID for r in rt.StructureSetROISequence)
    again = write_dicom_seg(labels, folder, NAMES, tmp_path / "again.dcm")
    assert pydicom.dcmread(again).FrameOfReferenceUID == seg.FrameOfReferenceUID  # reproducible
    assert_dciodvfy_clean(seg_path, "SEG")
    assert_dciodvfy_clean(rt_path, "RTSTRUCT")
    np.testing.assert_array_equal(read_label_object(seg_path, image.shape, grid, NAMES), labels)


def test_blank_uids_come_from_the_file_meta_or_are_derived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Like the TotalSegmentator example CT: SOP Class/Instance, Study and Series UIDs present but empty."""

    def blank(ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = ""

    folder = tmp_path / "blank"
    paths = synthetic_series(folder, blank)
    instances = {str(pydicom.dcmread(p).file_meta.MediaStorageSOPInstanceUID) for p in paths}
    image, grid = read_dicom_series(folder)
    labels = box_labels(image.shape)
    with caplog.at_level(logging.WARNING, logger="carve.imaging.dicom"):
        seg_path, rt_path = export_both(folder, tmp_path, labels)
    assert "the source has no StudyInstanceUID" in caplog.text and "no SeriesInstanceUID" in caplog.text
    seg, rt = pydicom.dcmread(seg_path), pydicom.dcmread(rt_path)
    assert seg.StudyInstanceUID and seg.StudyInstanceUID == rt.StudyInstanceUID
    references = [r for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
    assert {r.ReferencedSOPInstanceUID for r in references} == instances
    series_ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence} == instances
    assert series_ref.SeriesInstanceUID == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert_dciodvfy_clean(seg_path, "SEG")
    assert_dciodvfy_clean(rt_path, "RTSTRUCT")
    np.testing.assert_array_equal(read_label_object(seg_path, image.shape, grid, NAMES), labels)


def test_images_without_any_sop_instance_uid_are_refused(tmp_path: Path) -> None:
    def blank(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""

    folder = tmp_path / "unreferenceable"
    synthetic_series(folder, blank)
    image, _ = read_dicom_series(folder)
    with pytest.raises(DicomError, match=r"IM0001.dcm has neither SOPInstanceUID nor MediaStorageSOPInstanceUID"):
        write_dicom_seg(box_labels(image.shape), folder, NAMES, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_rtstruct_with_a_contour_over_64_kib_is_written_in_implicit_vr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DS value longer than 0xFFFE bytes does not fit explicit VR (pydicom would turn it into UN)."""
    folder = tmp_path / "large"
    direction = Rotation.from_euler("xyz", (3.0, -4.0, 5.0), degrees=True).as_matrix()
    geometry = Geometry((2.0, 0.7, 0.7), (-120.3, 80.7, 33.3), tuple(map(tuple, direction)))
    write_dicom_series(np.zeros((3, 400, 400), dtype=np.int16), geometry, folder, uid_seed="large contour")
    image, grid = read_dicom_series(folder)
    labels = np.zeros(image.shape, dtype=np.uint8)
    for r in range(10, 390):  # a comb: one contour of about 2300 points
        labels[1, r, 10 + 3 * (r % 2) : 390 - 3 * (r % 2)] = 1
    with caplog.at_level(logging.INFO, logger="carve.imaging.dicom"):
        path = write_rtstruct(labels, folder, {1: "comb"}, tmp_path / "rt.dcm")
    assert "written in implicit VR little endian" in caplog.text
    rt = pydicom.dcmread(path)
    assert rt.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    (contour,) = rt.ROIContourSequence[0].ContourSequence
    assert contour["ContourData"].VR == "DS" and len(contour.ContourData) > 6000
    assert_dciodvfy_clean(path, "RTSTRUCT")
    assert dice(read_label_object(path, image.shape, grid, {1: "comb"}) == 1, labels == 1) > 0.99
