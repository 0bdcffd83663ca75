"""carve.export.dicom_export on real series of several vendors: DICOM-SEG and RTSTRUCT pass dciodvfy and round-trip.

The series are anonymised the way public test data is: dicom2nifti's lack Frame of Reference UIDs and most type-2
Patient/Study attributes (birth date, sex, accession number, referring physician), the TotalSegmentator CT has
empty SOP Class/Instance, Study and Series UIDs (only the file meta keeps the SOP UIDs), dicom2nifti's carry an
invalid patient age ('0Y'), some unusual character sets (a single 'ISO 2022 IR 13', Japanese 'ISO 2022 IR 87'),
enhanced multi-frame objects keep pixel measures per frame or have no shared functional groups. The labels are
drawn on the grid carve's reader returns: a thresholded blob of the real image and a box. Each object must pass
dciodvfy without errors, read back to the same voxels (carve's reader, and highdicom by source image/frame, which
checks the per-frame references), reference the source's UIDs, and leave the source's patient name, ID and birth
date out of logs, warnings, file names and every attribute outside the Patient and Study modules (which DICOM
requires to be copied from the source).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import assert_dciodvfy_clean

from carve.export.dicom_export import STUDY_KEYWORDS, write_dicom_seg, write_rtstruct
from carve.imaging.convert import DicomOptions
from carve.imaging.dicom import find_series, read_dicom_series, select_series
from carve.imaging.dicom_labels import read_label_object
from carve.imaging.io import Geometry

pytestmark = pytest.mark.realdata

NAMES = {1: "blob", 2: "box"}
D2N = "dicom/dicom2nifti"
SERIES = {  # name -> (folder under the shared data, min_slices)
    "ge_mr": (f"{D2N}/ge/anatomical/001", 3),
    "siemens_mr": (f"{D2N}/siemens/anatomical/001", 3),
    "hitachi_mr_iso2022": (f"{D2N}/hitachi/anatomical/001", 3),
    "pmod_mr_float": (f"{D2N}/generic/anatomical/002_non_isotropic", 3),
    "generic_mr_jpegls": (f"{D2N}/generic/compressed_jpegls/001", 3),
    "philips_enhanced_multiframe": (f"{D2N}/philips_enhanced/anatomical/001", 3),
    "siemens_multiframe_no_shared_groups": (f"{D2N}/siemens_multiframe/anatomical/001", 3),
    "hyperfine_multiframe": (f"{D2N}/hyperfine/anatomical/001", 3),
    "siemens_ct_blank_uids": ("ct/totalsegmentator_example/example_ct_dicom", 3),
    "ge_ct_dcmqi": ("dicom/dcmqi_ct3slice_seg/segmentations/ct-3slice", 3),
    "ge_ct_rtstruct_mock": ("dicom/rtstruct_mock", 2),
}
SECRETS = ("PatientName", "PatientID", "PatientBirthDate")
TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}


@dataclass(frozen=True)
class Source:
    folder: Path
    options: DicomOptions
    image: np.ndarray
    geometry: Geometry
    headers: list[pydicom.Dataset]  # as stored, file order

    def first(self, keyword: str) -> str:
        return str(self.headers[0].get(keyword, "") or "")

    def sop_uids(self) -> set[str]:
        """SOP Instance UIDs of the source images, from the file meta where the dataset's is empty."""
        return {str(h.get("SOPInstanceUID") or h.file_meta.MediaStorageSOPInstanceUID) for h in self.headers}

    def secrets(self) -> list[str]:
        return [v for v in (self.first(k) for k in SECRETS) if len(v) >= 4]


@pytest.fixture(scope="module", params=sorted(SERIES))
def source(request: pytest.FixtureRequest, shared_data: Path) -> Source:
    relative, min_slices = SERIES[request.param]
    folder = shared_data / relative
    image, geometry = read_dicom_series(folder, min_slices=min_slices)
    files = select_series(find_series(folder)).files  # the series the exporter chooses
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    return Source(folder, DicomOptions(min_slices=min_slices), image, geometry, headers)


def labels_for(image: np.ndarray) -> np.ndarray:
    """A blob (voxels above the median inside the central box) and a box in the last slices, both non-empty."""
    n, rows, columns = image.shape
    labels = np.zeros(image.shape, dtype=np.uint8)
    core = (slice(None), slice(rows // 4, rows // 2), slice(columns // 4, columns // 2))
    labels[core][image[core] > np.median(image[core])] = 1
    labels[n // 2 :, rows // 2 + 2 : 3 * rows // 4, columns // 2 + 2 : 3 * columns // 4] = 2
    assert (labels == 1).sum() > 20 and (labels == 2).sum() > 20
    return labels


def export(kind: str, source: Source, out: Path, caplog: pytest.LogCaptureFixture) -> tuple[Path, np.ndarray, str]:
    """Write the SEG or RTSTRUCT; the labels and everything said (log records and Python warnings)."""
    labels = labels_for(source.image)
    writer = write_dicom_seg if kind == "seg" else write_rtstruct
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = writer(labels, source.folder, NAMES, out / f"{kind}.dcm", dicom=source.options)
    said = caplog.text + "\n".join(str(w.message) for w in caught)
    return path, labels, said.replace(str(source.folder), "<source folder>")


def check_uid(source: Source, keyword: str, referenced: str, said: str) -> None:
    """The object names the source's UID, or (where an anonymiser removed it) a derived one and says so."""
    if expected := source.first(keyword):
        assert referenced == expected, keyword
    else:
        assert referenced and f"the source has no {keyword}" in said, keyword


def check_privacy(source: Source, path: Path, said: str) -> None:
    """The source's name, ID and birth date: in no message, no file name, no attribute but the Patient/Study ones.

    Attributes are compared as text (names, codes, descriptions, dates): digits-only IDs and dates would otherwise
    match inside coordinates and UIDs by chance.
    """
    out = pydicom.dcmread(path)
    for keyword in SECRETS:  # copied as they are (possibly empty), never invented
        assert str(out.get(keyword, "")) == source.first(keyword), keyword
    for element in list(out):
        if element.tag.group in (0x0010, 0x0012) or element.keyword in STUDY_KEYWORDS:
            del out[element.tag]
    text = [str(e.value) for e in out.iterall() if e.VR in TEXT_VRS and e.value not in (None, "")]
    assert any("carve" in t for t in text)  # the object's own texts are there to be searched
    # the series description is not a patient attribute (carve logs it), though a phantom's may equal its name
    said = said.replace(source.first("SeriesDescription") or "\0", "<series description>")
    for secret in source.secrets():
        assert secret not in said, f"{secret!r} in a log message or warning"
        assert secret not in path.name
        assert not [t for t in text if secret in t], f"{secret!r} outside the Patient/Study modules of {path.name}"


def place_by_source(seg: hd.seg.Segmentation, source: Source) -> np.ndarray:
    """highdicom's masks for every source image/frame (found through the SEG's references), on carve's grid."""
    labels = np.zeros(source.image.shape, dtype=np.uint8)
    for header in source.headers:
        uid = str(header.get("SOPInstanceUID") or header.file_meta.MediaStorageSOPInstanceUID)
        n = int(header.get("NumberOfFrames") or 1)
        options = {"combine_segments": True, "assert_missing_frames_are_empty": True}
        if n > 1:
            masks = seg.get_pixels_by_source_frame(uid, list(range(1, n + 1)), **options)
            frames = header.PerFrameFunctionalGroupsSequence
            positions = [f.PlanePositionSequence[0].ImagePositionPatient for f in frames]
        else:
            masks = seg.get_pixels_by_source_instance([uid], **options)
            positions = [header.ImagePositionPatient]
        index = source.geometry.world_to_index(np.asarray(positions, dtype=float))
        np.testing.assert_allclose(index, np.rint(index), atol=1e-2)  # every source frame is a slice of the grid
        for k, mask in zip(np.rint(index[:, 0]).astype(int), masks, strict=True):
            labels[k] = mask
    return labels


def test_seg_on_real_series(source: Source, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, labels, said = export("seg", source, tmp_path, caplog)
    assert_dciodvfy_clean(path, "SEG")
    np.testing.assert_array_equal(read_label_object(path, source.image.shape, source.geometry, NAMES), labels)
    seg = hd.seg.segread(path)
    np.testing.assert_array_equal(place_by_source(seg, source), labels)

    references = [r for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
    assert {r.ReferencedSOPInstanceUID for r in references} == source.sop_uids()
    assert len(seg.ReferencedSeriesSequence) == 1 and seg.SeriesInstanceUID != source.first("SeriesInstanceUID")
    check_uid(source, "StudyInstanceUID", seg.StudyInstanceUID, said)
    check_uid(source, "SeriesInstanceUID", seg.ReferencedSeriesSequence[0].SeriesInstanceUID, said)
    check_uid(source, "FrameOfReferenceUID", seg.FrameOfReferenceUID, said)
    check_privacy(source, path, said)


def test_rtstruct_on_real_series(source: Source, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, labels, said = export("rtstruct", source, tmp_path, caplog)
    assert_dciodvfy_clean(path, "RTSTRUCT")
    back = read_label_object(path, source.image.shape, source.geometry, NAMES)
    for value in NAMES:
        a, b = back == value, labels == value
        assert 2.0 * float((a & b).sum()) / float(a.sum() + b.sum()) > 0.9, NAMES[value]

    rt = pydicom.dcmread(path)
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == source.sop_uids()
    check_uid(source, "StudyInstanceUID", study.ReferencedSOPInstanceUID, said)
    check_uid(source, "SeriesInstanceUID", series.SeriesInstanceUID, said)
    check_uid(source, "FrameOfReferenceUID", frame.FrameOfReferenceUID, said)
    assert rt.FrameOfReferenceUID == frame.FrameOfReferenceUID and rt.StudyInstanceUID == study.ReferencedSOPInstanceUID
    seg = pydicom.dcmread(write_dicom_seg(labels, source.folder, NAMES, tmp_path / "seg.dcm", dicom=source.options))
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (rt.StudyInstanceUID, rt.FrameOfReferenceUID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.SeriesInstanceUID  # derived ones agree too
    check_privacy(source, path, said)
