"""DICOM out for viewers: a label volume as DICOM-SEG (highdicom) or RTSTRUCT (pydicom), referencing its source.

``labels`` is in carve's convention on the grid :func:`carve.dicom.read_dicom_series` returns for the source
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
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from skimage.measure import find_contours

from carve import __version__
from carve.convert import DicomOptions
from carve.dicom import DicomError, find_series, read_dicom_series, select_series
from carve.dicom_labels import RTSTRUCT_SOP_CLASS
from carve.io import Geometry, atomic_write_bytes

__all__ = ["label_colour", "mask_contours", "write_dicom_seg", "write_rtstruct"]

log = logging.getLogger("carve.dicom")

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
DEFAULT_DICOM = DicomOptions()
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
    for ds in datasets:  # an empty SpecificCharacterSet means the default repertoire: say so explicitly
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    shape = tuple(int(s) for s in array.shape)
    slices: dict[int, Dataset] = {}
    for ds in datasets:
        if int(ds.get("NumberOfFrames") or 1) > 1 or "ImagePositionPatient" not in ds:
            continue
        index = geometry.world_to_index(np.asarray(ds.ImagePositionPatient, dtype=float))[0]
        k = int(np.rint(index[0]))
        if 0 <= k < shape[0] and np.abs((index - (k, 0, 0)) * geometry.spacing_mm).max() <= POSITION_TOLERANCE_MM:
            slices[k] = ds
    return _Source(f"{folder}: series {info.uid}", datasets, shape, geometry, slices)


def _check_labels(labels: np.ndarray, source: _Source, label_names: dict[int, str]) -> list[int]:
    if labels.shape != source.shape:
        raise ValueError(f"{source.name}: labels have shape {labels.shape}, the series grid is {source.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise ValueError(f"{source.name}: labels must be integers, got {labels.dtype}")
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in label_names]
    if unknown:
        raise ValueError(f"{source.name}: label value(s) {unknown} have no name in {label_names}")
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
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    path = atomic_write_bytes(out_path, buffer.getvalue())
    n = sum(len(item.ContourSequence) for item in roi_contours)
    log.info("%s: wrote RTSTRUCT %s: %d ROI(s), %d contour(s)", source.name, path, len(present), n)
    return path


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
    from carve.io import read_image

    dicom = DicomOptions(**(dicom_options or {}))
    labels, _ = read_image(labels_path)
    writers = {"seg": write_dicom_seg, "rtstruct": write_rtstruct}
    if kind not in writers:
        raise ValueError(f"unknown DICOM export kind '{kind}' (seg or rtstruct)")
    return writers[kind](labels.astype(np.uint8), Path(source_folder), dict(label_names), Path(out_path), dicom=dicom)
