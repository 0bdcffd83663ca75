"""DICOM out for viewers: a label volume as DICOM-SEG (highdicom) or RTSTRUCT (pydicom), referencing its source.

``labels`` is in carve's convention on the grid :func:`carve.imaging.dicom.read_dicom_series` returns for the source
series (same shape and geometry). Both writers place the labels by patient position, so the order of the source
files does not matter:

* DICOM-SEG: BINARY, one segment per label value present, segment label = the config's name, algorithm type
  AUTOMATIC named "carve", generic codes (category and type SCT 85756007 "Tissue"). highdicom infers for every frame
  the source image at the same position (Derivation Image / Source Image Sequence) and references the source
  series and frame of reference.
* RTSTRUCT: one ROI per label value present (ROI name = the config's name, a display colour per label), one
  CLOSED_PLANAR contour per boundary found by ``skimage.measure.find_contours`` on each slice (holes are contours
  of their own: readers fill contours by XOR), in patient mm; each contour references the source image of its slice.

Patient identifiers: a DICOM-SEG must belong to the source study, and highdicom copies the Patient, General Study,
Patient Study and Clinical Trial modules from the source by design (that is the standard). The RTSTRUCT copies only
the Patient and Study attributes the IOD requires (name, ID, birth date, sex; study UID, date, time, ID, accession
number, referring physician). Nothing else about the patient is added, UIDs derive from the source series UID and
the label content, and the caller chooses file names (they should carry no identifiers). Writes are atomic.

Anonymised sources: the writers work on in-memory copies of the source headers (the source files are never
changed), so that every written object passes dciodvfy (tested on real series of several vendors):

* Type-2 Patient and Study attributes that a source lacks (birth date, sex, study ID, accession number, referring
  physician, study date and time) are written present and empty, as the standard allows, never filled in.
* A Patient/Study value that is not valid for its VR (a birth date '2016', a sex other than M, F, O, a weight that
  is no number) is written empty (type 2) or left out (type 3); an age without its leading zeros ('0Y') is padded.
  A warning names the attribute, never its value.
* Type-1 UIDs that an anonymiser removed cannot be left empty: SOP Class/Instance UIDs come from the file meta
  (the same UIDs by Part 10); a missing Study, Series or Frame of Reference UID is derived from the source's SOP
  Instance UIDs (reproducible, the same for SEG and RTSTRUCT of one series) with a warning that viewers cannot
  link the object to its source by that UID. A source image without any SOP Instance UID is refused.
* A missing SliceThickness (single-frame) becomes the slice spacing carve measured (a SEG's pixel measures need
  one); pixel measures and plane orientation that an enhanced multi-frame object repeats in every frame (or has
  no shared functional group for) are treated as shared; a single 'ISO 2022 IR n' character set is read as
  'ISO_IR n'.

No patient value appears in a log message, and highdicom's warning about single-component person names (which
quotes the name) is suppressed. An RTSTRUCT is written in explicit VR little endian, or implicit VR when a
contour's ContourData is longer than the 64 KiB explicit VR allows for a DS value.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds, validate_value
from skimage.measure import find_contours

from carve import __version__
from carve.errors import InputError
from carve.imaging.convert import DicomOptions
from carve.imaging.dicom import DicomError, find_series, read_dicom_series, select_series
from carve.imaging.dicom_labels import RTSTRUCT_SOP_CLASS
from carve.imaging.io import Geometry, atomic_write_bytes

__all__ = ["label_colour", "mask_contours", "write_dicom_seg", "write_rtstruct"]

log = logging.getLogger("carve.imaging.dicom")

DETACHED_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RT Referenced Study Sequence items name by convention
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
TYPE2_PATIENT_STUDY = tuple(k for k in PATIENT_STUDY_KEYWORDS if k != "StudyInstanceUID")
# Study attributes outside groups 0010/0012 that highdicom copies into a SEG (General/Patient Study modules)
STUDY_KEYWORDS = (*TYPE2_PATIENT_STUDY, "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy")
STUDY_KEYWORDS += ("AdmittingDiagnosesDescription", "AdmissionID")
PATIENT_SEX_VALUES = ("M", "F", "O")
META_UIDS = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"  # highdicom, quotes it
DEFAULT_DICOM = DicomOptions()
EXPLICIT_VR_MAX_BYTES = 0xFFFE  # a DS value's length field has 16 bits in explicit VR
POSITION_TOLERANCE_MM = 0.05  # a source image lies on a label slice when its position is this close


def label_colour(value: int) -> tuple[int, int, int]:
    """A display colour (RGB 0-255) per label value, the same in SEG and RTSTRUCT."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class _Source:
    name: str
    datasets: list[Dataset]  # headers, in file order
    shape: tuple[int, int, int]
    geometry: Geometry
    slice_sources: dict[int, Dataset]  # label slice -> the single-frame source image at its position


def _source(folder: Path, dicom: DicomOptions) -> _Source:
    info = select_series(find_series(folder), dicom.series_uid, dicom.series_description, folder=folder)
    array, geometry = read_dicom_series(
        folder,
        uid=info.uid,
        tilt=dicom.tilt,
        uneven_spacing=dicom.uneven_spacing,
        min_slices=dicom.min_slices,
    )
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in info.files]
    where = f"{folder}: series {info.uid}"
    _complete_headers(datasets, list(info.files), where)
    thickness = format_number_as_ds(float(geometry.spacing_mm[0]))
    for ds in datasets:  # type 2, and a SEG's pixel measures need it: the slice spacing carve measured
        if int(ds.get("NumberOfFrames") or 1) == 1 and _empty(ds, "SliceThickness"):
            ds.SliceThickness = thickness
    shape = tuple(int(s) for s in array.shape)
    slices: dict[int, Dataset] = {}
    for ds in datasets:
        if int(ds.get("NumberOfFrames") or 1) > 1 or "ImagePositionPatient" not in ds:
            continue
        index = geometry.world_to_index(np.asarray(ds.ImagePositionPatient, dtype=float))[0]
        k = int(np.rint(index[0]))
        if 0 <= k < shape[0] and np.abs((index - (k, 0, 0)) * geometry.spacing_mm).max() <= POSITION_TOLERANCE_MM:
            slices[k] = ds
    return _Source(where, datasets, shape, geometry, slices)


def _empty(ds: Dataset, keyword: str) -> bool:
    return keyword not in ds or ds[keyword].value in (None, "", b"") or str(ds[keyword].value) == ""


def _fill_uid(datasets: list[Dataset], keyword: str, derived: str, where: str, why: str) -> None:
    """Give every header without ``keyword`` the series' one value, or ``derived`` when none has it."""
    if not any(_empty(ds, keyword) for ds in datasets):
        return
    values = {str(ds[keyword].value) for ds in datasets if not _empty(ds, keyword)}
    if len(values) == 1:
        value = values.pop()
        lacking = sum(_empty(ds, keyword) for ds in datasets)
        log.warning("%s: %d image(s) lack %s; the series' value is used for them", where, lacking, keyword)
    else:
        value = derived
        log.warning(
            "%s: the source has no %s (type 1; removed by an anonymiser?); the object gets %s, derived from the "
            "source's SOP Instance UIDs, so %s",
            where,
            keyword,
            value,
            why,
        )
    for ds in datasets:
        if _empty(ds, keyword):
            setattr(ds, keyword, value)


def _character_set(ds: Dataset) -> None:
    """Write an empty SpecificCharacterSet, or a single 'ISO 2022 IR n' (code extensions with nothing to switch
    to), as the equivalent without extensions: left out (the default repertoire) or 'ISO_IR n', as highdicom wants."""
    if "SpecificCharacterSet" not in ds:
        return
    value = ds.SpecificCharacterSet
    values = [str(v) for v in ([value] if isinstance(value, str) else value) if v]
    if len(values) == 1 and values[0].startswith("ISO 2022 IR "):
        number = values[0].removeprefix("ISO 2022 IR ")
        if number == "6":
            values = []
        elif f"ISO_IR {number}" in python_encoding:
            ds.SpecificCharacterSet = f"ISO_IR {number}"
    if not values:
        del ds.SpecificCharacterSet


def _share_functional_groups(ds: Dataset, where: str) -> None:
    """Move pixel measures and plane orientation that every frame repeats into the shared functional groups.

    Enhanced multi-frame objects may carry them per frame (Philips) or have no shared group at all (Siemens);
    highdicom reads them from the shared group. Identical per-frame values mean the same as one shared value.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if int(ds.get("NumberOfFrames") or 1) <= 1 or not per_frame:
        return
    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    shared = ds.SharedFunctionalGroupsSequence[0]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword in shared or not all(keyword in frame for frame in per_frame):
            continue
        first = per_frame[0][keyword]
        if all(frame[keyword].value == first.value for frame in per_frame):
            shared[keyword] = first
            for frame in per_frame:
                del frame[keyword]
            log.debug("%s: %s is the same in every frame: moved to the shared functional groups", where, keyword)


def _complete_headers(datasets: list[Dataset], paths: list[Path], where: str) -> None:
    """Make the in-memory source headers usable by the writers (see the module docstring), in place.

    Type-2 Patient/Study attributes that are missing become present and empty, invalid values are emptied or
    left out (:func:`_drop_invalid_patient_study`), missing type-1 UIDs come from the file meta or are derived.
    Nothing is invented about the patient, and log messages name attributes, never their values.
    """
    for ds, path in zip(datasets, paths, strict=True):
        _character_set(ds)
        _share_functional_groups(ds, where)
        for keyword, meta in META_UIDS.items():
            if _empty(ds, keyword):
                value = str((getattr(ds, "file_meta", None) or Dataset()).get(meta, "") or "")
                if not value:
                    raise DicomError(f"{where}: {path.name} has neither {keyword} nor {meta}: it cannot be referenced")
                setattr(ds, keyword, value)
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    derived = {k: generate_uid(entropy_srcs=[*instances, k]) for k in ("study", "series", "frame of reference")}
    _fill_uid(datasets, "StudyInstanceUID", derived["study"], where, "viewers cannot put it in the source's study")
    _fill_uid(datasets, "SeriesInstanceUID", derived["series"], where, "it names a series no source image carries")
    _fill_uid(
        datasets,
        "FrameOfReferenceUID",
        derived["frame of reference"],
        where,
        "it is placed on the source images by position only",
    )
    missing: set[str] = set()
    invalid: set[str] = set()
    for ds in datasets:
        for keyword in (*TYPE2_PATIENT_STUDY, "PositionReferenceIndicator"):
            if keyword not in ds:
                missing.add(keyword)
            if keyword not in ds or ds[keyword].value is None:
                setattr(ds, keyword, "")
        invalid |= _drop_invalid_patient_study(ds)
    if missing:
        log.info("%s: the source lacks type-2 attribute(s) %s: written empty", where, ", ".join(sorted(missing)))
    if invalid:
        log.warning(
            "%s: the source's %s %s not valid DICOM: type 2 written empty, type 3 left out",
            where,
            ", ".join(sorted(invalid)),
            "is" if len(invalid) == 1 else "are",
        )


def _valid(element: DataElement) -> bool:
    """Whether every value of ``element`` is valid for its VR (numbers and names as the strings they were read as)."""
    values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
    try:
        for value in values:
            text = str(value) if element.VR in ("DS", "IS", "PN") and value is not None else value
            validate_value(element.VR, text, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _drop_invalid_patient_study(ds: Dataset) -> set[str]:
    """Empty (type 2) or remove (type 3) Patient and Study attributes whose value is not valid for its VR.

    Covers what highdicom copies from the source (groups 0010 and 0012, and :data:`STUDY_KEYWORDS`), plus
    Patient's Sex outside M, F, O. An age written without leading zeros ('0Y') is zero-padded ('000Y').
    Returns the keywords changed; their values are never logged.
    """
    changed: set[str] = set()
    for element in list(ds):
        keyword = element.keyword
        if element.VR == "SQ" or element.value in (None, "", b""):
            continue
        if element.tag.group not in (0x0010, 0x0012) and keyword not in STUDY_KEYWORDS:
            continue
        if element.VR == "AS" and isinstance(element.value, str) and re.fullmatch(r"\d{1,2}[DWMY]", element.value):
            element.value = element.value.zfill(4)
        valid = _valid(element) and (keyword != "PatientSex" or str(element.value) in PATIENT_SEX_VALUES)
        if not valid:
            changed.add(keyword or str(element.tag))
            if keyword in TYPE2_PATIENT_STUDY:
                element.value = ""
            else:
                del ds[element.tag]
    return changed


def _check_labels(labels: np.ndarray, source: _Source, label_names: dict[int, str]) -> list[int]:
    if labels.shape != source.shape:
        raise InputError(f"{source.name}: labels have shape {labels.shape}, the series grid is {source.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise InputError(f"{source.name}: labels must be integers, got {labels.dtype}")
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in label_names]
    if unknown:
        raise InputError(f"{source.name}: label value(s) {unknown} have no name in {label_names}")
    return present


def _uid(source: _Source, labels: np.ndarray, label_names: dict[int, str], what: str, *context: str) -> str:
    """A UID that depends on the source series, the labels, their names and ``context`` only (reproducible)."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    digest.update(repr((sorted(label_names.items()), context)).encode())
    return generate_uid(entropy_srcs=[str(source.datasets[0].SeriesInstanceUID), digest.hexdigest(), what])


def write_dicom_seg(
    labels: np.ndarray,
    source_folder: str | os.PathLike,
    label_names: Mapping[int, str],
    out_path: str | os.PathLike,
    *,
    series_description: str = "carve segmentation",
    algorithm_version: str = __version__,
    dicom: DicomOptions = DEFAULT_DICOM,
) -> Path:
    """Write ``labels`` as a BINARY DICOM-SEG referencing the source series in ``source_folder``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _source(Path(source_folder), dicom)
    label_names = {int(v): str(n) for v, n in label_names.items()}
    present = _check_labels(labels, source, label_names)
    context = (series_description, algorithm_version)
    if not present:
        present = [min(v for v in label_names if v)]
        log.warning("%s: the labels are empty; writing one empty segment '%s'", source.name, label_names[present[0]])
    lut = np.zeros(max(256, max(present) + 1), dtype=np.uint8)
    lut[present] = np.arange(1, len(present) + 1)
    numbered = lut[np.asarray(labels, dtype=np.int64)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="carve", family=codes.DCM.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label_names[v],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label_colour(v)),
        )
        for i, v in enumerate(present)
    ]
    frame_of_reference = str(source.datasets[0].get("FrameOfReferenceUID", "")) or None
    volume = hd.Volume(numbered, source.geometry.affine, "PATIENT", frame_of_reference_uid=frame_of_reference)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=source.datasets,
                pixel_array=volume,
                segmentation_type="BINARY",
                segment_descriptions=descriptions,
                series_instance_uid=_uid(source, labels, label_names, "seg series", *context),
                series_number=int(source.datasets[0].get("SeriesNumber") or 0) + 1000,
                sop_instance_uid=_uid(source, labels, label_names, "seg instance", *context),
                instance_number=1,
                manufacturer="carve",
                manufacturer_model_name="carve",
                software_versions=algorithm_version,
                device_serial_number="0",
                series_description=series_description,
            )
    except Exception as err:
        raise DicomError(f"{source.name}: cannot build a DICOM-SEG: {err}") from None
    referenced = sum("DerivationImageSequence" in f for f in seg.PerFrameFunctionalGroupsSequence)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    path = atomic_write_bytes(out_path, buffer.getvalue())
    log.info(
        "%s: wrote DICOM-SEG %s: %d segment(s), %d frame(s), %d referencing a source image",
        source.name,
        path,
        len(present),
        int(seg.NumberOfFrames),
        referenced,
    )
    return path


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundary polygons (K, 2) of a 2D mask in (row, column) pixel coordinates, first point not repeated.

    The boundaries run half-way between foreground and background pixel centres (marching squares at level 0.5),
    so filling them by XOR (``skimage.draw.polygon``, pixel centres inside) gives the mask back; collinear points
    are dropped.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        points = contour[:-1] - 1.0 if np.allclose(contour[0], contour[-1]) else contour - 1.0
        turn = np.roll(points, -1, axis=0) - points
        before = points - np.roll(points, 1, axis=0)
        keep = np.abs(before[:, 0] * turn[:, 1] - before[:, 1] * turn[:, 0]) > 1e-9
        if keep.sum() >= 3:
            polygons.append(points[keep])
    return polygons


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
    return item


def write_rtstruct(
    labels: np.ndarray,
    source_folder: str | os.PathLike,
    label_names: Mapping[int, str],
    out_path: str | os.PathLike,
    *,
    series_description: str = "carve structures",
    algorithm_version: str = __version__,
    dicom: DicomOptions = DEFAULT_DICOM,
) -> Path:
    """Write ``labels`` as an RTSTRUCT (one ROI per label present, contours per slice) referencing the source."""
    source = _source(Path(source_folder), dicom)
    label_names = {int(v): str(n) for v, n in label_names.items()}
    present = _check_labels(labels, source, label_names)
    context = (series_description, algorithm_version)
    first = source.datasets[0]
    frame_of_reference = str(first.get("FrameOfReferenceUID", ""))
    now = datetime.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = _uid(source, labels, label_names, "rtstruct instance", *context)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet") or "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = ds.StructureSetDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = ds.SeriesTime = now.strftime("%H%M%S")
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.FrameOfReferenceUID = frame_of_reference  # Frame of Reference module (the contours are in its coordinates)
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality, ds.SeriesDescription, ds.OperatorsName = "RTSTRUCT", series_description, ""
    ds.SeriesInstanceUID = _uid(source, labels, label_names, "rtstruct series", *context)
    ds.SeriesNumber, ds.InstanceNumber = int(first.get("SeriesNumber") or 0) + 1001, 1
    ds.Manufacturer = ds.ManufacturerModelName = "carve"
    ds.SoftwareVersions = algorithm_version
    ds.StructureSetLabel = "carve"
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = DicomSequence([_ref(d.SOPClassUID, d.SOPInstanceUID) for d in source.datasets])
    study_ref = _ref(DETACHED_STUDY_SOP_CLASS, str(first.StudyInstanceUID))
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = frame_of_reference
    for_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_ref])
    rois, roi_contours, observations = [], [], []
    for number, value in enumerate(present, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_of_reference
        roi.ROIName, roi.ROIGenerationAlgorithm = label_names[value], "AUTOMATIC"
        rois.append(roi)
        item = Dataset()
        item.ROIDisplayColor = list(label_colour(value))
        item.ReferencedROINumber = number
        item.ContourSequence = DicomSequence(_contours(labels == value, source))
        roi_contours.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "", ""  # type 2: unknown
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    longest = max((_ds_length(c.ContourData) for item in roi_contours for c in item.ContourSequence), default=0)
    if longest > EXPLICIT_VR_MAX_BYTES:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        log.info(
            "%s: a contour's ContourData takes %d bytes, more than explicit VR allows for a DS value: the RTSTRUCT "
            "is written in implicit VR little endian",
            source.name,
            longest,
        )
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    path = atomic_write_bytes(out_path, buffer.getvalue())
    n = sum(len(item.ContourSequence) for item in roi_contours)
    log.info("%s: wrote RTSTRUCT %s: %d ROI(s), %d contour(s)", source.name, path, len(present), n)
    return path


def _ds_length(values: Sequence[object]) -> int:
    """Encoded length of a multi-valued DS: the strings, the backslashes between them, even-padded."""
    n = sum(len(str(v)) for v in values) + max(len(values) - 1, 0)
    return n + n % 2


def _contours(mask: np.ndarray, source: _Source) -> list[Dataset]:
    items = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        for points in mask_contours(mask[k]):
            world = source.geometry.index_to_world(np.column_stack([np.full(len(points), k), points]))
            item = Dataset()
            if (image := source.slice_sources.get(int(k))) is not None:
                item.ContourImageSequence = DicomSequence([_ref(image.SOPClassUID, image.SOPInstanceUID)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [format_number_as_ds(float(v)) for v in world.ravel()]
            items.append(item)
    return items


def export_prediction(
    kind: str,
    labels_path: Path,
    source_folder: Path,
    label_names: Mapping[int, str],
    out_path: Path,
    dicom_options: Mapping | None = None,
) -> Path:
    """Write a predicted label file as DICOM-SEG (``kind="seg"``) or RTSTRUCT (``"rtstruct"``)."""
    from carve.imaging.io import read_image

    dicom = DicomOptions(**(dicom_options or {}))
    labels, _ = read_image(labels_path)
    writers = {"seg": write_dicom_seg, "rtstruct": write_rtstruct}
    if kind not in writers:
        raise ValueError(f"unknown DICOM export kind '{kind}' (seg or rtstruct)")
    return writers[kind](labels.astype(np.uint8), Path(source_folder), dict(label_names), Path(out_path), dicom=dicom)
