"""DICOM out: write a 3D volume as a classic single-frame MR or CT series (one file per slice).

Used for the synthetic demo and for tests. The geometry is carve's (see :mod:`carve.imaging.io`): slice ``k`` is
``array[k]``, its ImagePositionPatient is the world position of voxel ``[k, 0, 0]``, ImageOrientationPatient is
``(direction[:, 2], direction[:, 1])`` and PixelSpacing ``(spacing_mm[1], spacing_mm[2])``. Reading the series
back with :func:`carve.imaging.dicom.read_dicom_series` gives the same grid when axis 0 runs along
``cross(direction[:, 2], direction[:, 1])`` (as for any grid read from DICOM); otherwise the slices come back in
reverse order, each voxel still at the same world position.

Everything is deterministic: UIDs derive from ``uid_seed``, dates are fixed, the patient is synthetic.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from carve.imaging.io import Geometry, atomic_write_bytes

log = logging.getLogger("carve.imaging.dicom")

SOP_CLASS = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}
FIXED_DATE, FIXED_TIME = "20000101", "120000"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as close to ``value`` as DS allows."""
    return format_number_as_ds(float(value))


def _storage(array: np.ndarray, slope: float | None, intercept: float | None) -> tuple[np.ndarray, str, str]:
    """Stored int16/uint16 pixels and the (slope, intercept) decimal strings that map them back to ``array``."""
    a = np.asarray(array, dtype=np.float64)
    if slope is None and intercept is None and np.all(a == np.round(a)):
        for dtype in (np.int16, np.uint16):
            if a.size and np.iinfo(dtype).min <= a.min() and a.max() <= np.iinfo(dtype).max:
                return a.astype(dtype), "1", "0"
    if slope is None:
        lo, hi = (float(a.min()), float(a.max())) if intercept is None else (float(intercept), float(a.max()))
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
        intercept = lo
    m_str, b_str = _ds(slope), _ds(intercept if intercept is not None else 0.0)
    m, b = float(m_str), float(b_str)
    stored = np.round((a - b) / m)
    for dtype in (np.uint16, np.int16):
        if np.iinfo(dtype).min <= stored.min() and stored.max() <= np.iinfo(dtype).max:
            return stored.astype(dtype), m_str, b_str
    raise ValueError(f"values {a.min():g}..{a.max():g} do not fit 16-bit pixels with slope {m} and intercept {b}")


def _check_geometry(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"write_dicom_series needs a 3D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("write_dicom_series: the array has NaN or infinite values")
    d = geometry.direction_matrix
    if np.abs(d.T @ d - np.eye(3)).max() > 1e-4:
        raise ValueError(f"write_dicom_series: direction is not orthonormal: {geometry.direction}")
    if np.dot(np.cross(d[:, 2], d[:, 1]), d[:, 0]) < 0:
        log.warning("axis 0 runs against the slice normal: a DICOM reader returns the slices in reverse order")
    return d


def write_dicom_series(
    array: np.ndarray,
    geometry: Geometry,
    out_dir: str | os.PathLike,
    *,
    modality: Literal["MR", "CT"] = "MR",
    series_description: str = "carve synthetic series",
    uid_seed: str = "carve",
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write ``array`` (slice, row, column) with ``geometry`` as ``out_dir/IM0001.dcm``, ... and return the paths.

    Pixels are stored as int16/uint16; integer arrays that fit are stored exactly, other arrays with a
    RescaleSlope/Intercept covering their range (quantisation step = slope), or with the given
    ``rescale_slope``/``rescale_intercept`` (e.g. 1 and -1024 for CT in Hounsfield units). Stale ``IM*.dcm``
    files of an earlier series in ``out_dir`` are removed.
    """
    if modality not in SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASS)}, got {modality!r}")
    d = _check_geometry(array, geometry)
    stored, slope, intercept = _storage(array, rescale_slope, rescale_intercept)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = (generate_uid(entropy_srcs=[uid_seed, k]) for k in ("study", "series", "for"))
    lo, hi = float(np.min(array)), float(np.max(array))
    n = array.shape[0]
    width = max(4, len(str(n)))
    paths = []
    for k in range(n):
        sop_uid = generate_uid(entropy_srcs=[uid_seed, "image", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[modality], sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = FIXED_DATE
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = FIXED_TIME
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = modality, "carve (synthetic)", series_description
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SYNTHETIC^DEMO", "DEMO", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.SeriesNumber, ds.InstanceNumber, ds.PositionReferenceIndicator = series_number, k + 1, ""
        position = geometry.index_to_world(np.array([k, 0, 0]))[0]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 2], *d[:, 1])]
        ds.SliceLocation = _ds(float(position @ np.cross(d[:, 2], d[:, 1])))
        ds.PixelSpacing = [_ds(geometry.spacing_mm[1]), _ds(geometry.spacing_mm[2])]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(geometry.spacing_mm[0])
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
            ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime, ds.ImagedNucleus = "3D", "5", "20", "1H"
        else:
            ds.KVP, ds.RescaleType = "120", "HU"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1.0))
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        paths.append(atomic_write_bytes(out_dir / f"IM{k + 1:0{width}d}.dcm", buffer.getvalue()))
    for stale in sorted(set(out_dir.glob("IM*.dcm")) - set(paths)):
        stale.unlink()
        log.info("removed stale %s", stale)
    return paths
