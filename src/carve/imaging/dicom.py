"""DICOM in: find the series in a folder, choose one, read it as a 3D volume in carve's convention.

The volume is ``array[slice, row, column]``: array axis 0 runs along the slice normal
``cross(row direction, column direction)`` of ImageOrientationPatient, axis 1 down the rows (the column
direction cosine, spacing ``PixelSpacing[0]``), axis 2 along a row (the row direction cosine, spacing
``PixelSpacing[1]``); the origin is the ImagePositionPatient of the first slice after sorting along the normal.
Slice spacing comes from the positions (median increment along the normal), never from SliceThickness.

Classic single-frame and enhanced multi-frame objects are read (functional groups: PlanePosition,
PlaneOrientation, PixelMeasures, PixelValueTransformation); compressed transfer syntaxes are decoded by pydicom's
plugins (pylibjpeg, pyjpegls). Anything that is not one regular 3D volume is refused with :class:`DicomError`
naming the series and the reason, after reading headers only. Patient identifiers are never logged.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from scipy import ndimage

from carve.errors import CarveError
from carve.export.dicom_write import write_dicom_series
from carve.imaging.io import Geometry

__all__ = ["DicomError", "SeriesInfo", "find_series", "read_dicom_series", "select_series", "write_dicom_series"]

log = logging.getLogger("carve.imaging.dicom")

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "RWV", "DOC"})
MAX_BYTES = 2 * 1024**3  # refuse series whose headers declare more pixel data than this
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


class DicomError(CarveError, ValueError):
    """A DICOM folder or series that carve cannot read as one 3D volume (the message says which and why)."""


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    description: str
    modality: str
    n_files: int
    files: tuple[Path, ...]
    rows: int
    columns: int
    n_frames: int  # frames over all files (one per single-frame file)
    multiframe: bool

    @property
    def n_voxels(self) -> int:
        return self.rows * self.columns * self.n_frames

    def summary(self) -> str:
        return f"{self.uid} '{self.description}' ({self.modality}, {self.n_files} files, {self.n_frames} frames)"


@dataclass(frozen=True)
class _Frame:
    """One 2D image: a single-frame file or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    sop_uid: str


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM file by its name or by the 'DICM' magic after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read_header(path: Path, broken: list[tuple[Path, str]] | None = None) -> Dataset | None:
    """The header of a DICOM file, or None; a file that looks like DICOM but cannot be read goes to ``broken``."""
    if path.name.upper() == "DICOMDIR":
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except Exception as err:  # not DICOM, truncated or unreadable: not part of any series
        log.debug("skipping %s: %s", path, type(err).__name__)
        if broken is not None and _looks_like_dicom(path):
            size = path.stat().st_size
            broken.append((path, "0 bytes" if size == 0 else " ".join(str(err).split())[:120] or type(err).__name__))
        return None
    if ds.file_meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS:
        return None
    if "SeriesInstanceUID" not in ds:  # every stored image object has one: a header cut short before it
        if broken is not None:
            broken.append((path, "the header ends before its SeriesInstanceUID"))
        return None
    return ds


def _scan(folder: Path, broken: list[tuple[Path, str]] | None = None) -> dict[str, list[tuple[Path, Dataset]]]:
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder")
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and (ds := _read_header(path, broken)) is not None:
                groups[str(ds.SeriesInstanceUID)].append((path, ds))
    return groups


def _info(uid: str, members: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = members[0][1]
    frames = [int(ds.get("NumberOfFrames") or 1) for _, ds in members]
    return SeriesInfo(
        uid=uid,
        description=str(first.get("SeriesDescription", "") or ""),
        modality=str(first.get("Modality", "") or ""),
        n_files=len(members),
        files=tuple(sorted(p for p, _ in members)),
        rows=int(first.get("Rows") or 0),
        columns=int(first.get("Columns") or 0),
        n_frames=sum(frames),
        multiframe=max(frames) > 1,
    )


def find_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """All DICOM series under ``folder`` (recursive; headers only; non-DICOM files and DICOMDIR skipped)."""
    groups = _scan(Path(folder))
    return sorted((_info(uid, m) for uid, m in groups.items()), key=lambda s: (s.description, s.uid))


def select_series(
    series: Sequence[SeriesInfo],
    uid: str | None = None,
    description_pattern: str | None = None,
    *,
    folder: str | os.PathLike | None = None,
) -> SeriesInfo:
    """The series with ``uid``, else the largest matching ``description_pattern`` (regex), else the largest 3D
    image series (most voxels). Raises :class:`DicomError` listing the available series when nothing matches."""
    where = str(folder) if folder is not None else (os.path.commonpath([s.files[0] for s in series]) if series else "")
    listing = "; ".join(s.summary() for s in series) or "none"
    if uid is not None:
        chosen = [s for s in series if s.uid == uid]
        reason = f"no series with SeriesInstanceUID {uid}"
    elif description_pattern is not None:
        rx = re.compile(description_pattern)
        chosen = [s for s in series if rx.search(s.description)]
        reason = f"no series whose SeriesDescription matches /{description_pattern}/"
    else:
        images = [s for s in series if s.modality.upper() not in NON_IMAGE_MODALITIES and s.rows and s.columns]
        chosen = [s for s in images if s.n_frames > 1] or images
        reason = "no image series"
    if not chosen:
        raise DicomError(f"{where}: {reason}; available series: {listing}")
    best = max(chosen, key=lambda s: (s.n_voxels, s.n_files, s.uid))
    how = "by uid" if uid else (f"by description /{description_pattern}/" if description_pattern else "largest")
    log.info("%s: selected series %s %s of %d series", where, best.summary(), how, len(series))
    return best


# ---- frames and their geometry ----------------------------------------------------------------------------
def _item(group: Dataset | None, sequence: str) -> Dataset | None:
    if group is not None and sequence in group and len(group[sequence].value) > 0:
        return group[sequence].value[0]
    return None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        vals = tuple(float(v) for v in ([value] if isinstance(value, str | bytes | float | int) else value))
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _frames(path: Path, ds: Dataset) -> list[_Frame]:
    n = int(ds.get("NumberOfFrames") or 1)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    sop = str(ds.get("SOPInstanceUID", path))
    frames = []
    for k in range(n):
        group = per_frame[k] if per_frame is not None and k < len(per_frame) else None

        def get(sequence: str, keyword: str, group: Dataset | None = group) -> object:
            for g in (group, shared):
                if (it := _item(g, sequence)) is not None and keyword in it:
                    return it[keyword].value
            return ds.get(keyword)

        pos = _floats(get("PlanePositionSequence", "ImagePositionPatient"), 3)
        iop = _floats(get("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        if n > 1 and _item(group, "PlanePositionSequence") is None:
            pos = None  # a multi-frame file must place every frame (PlanePositionSequence)
        slope = get("PixelValueTransformationSequence", "RescaleSlope")
        intercept = get("PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(
            _Frame(
                path=path,
                frame=k if n > 1 else None,
                position=pos,
                orientation=iop,
                pixel_spacing=_floats(get("PixelMeasuresSequence", "PixelSpacing"), 2),
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                sop_uid=sop,
            )
        )
    return frames


def _check_headers(name: str, members: list[tuple[Path, Dataset]], max_bytes: int) -> None:
    first = members[0][1]
    for path, ds in members:
        samples = int(ds.get("SamplesPerPixel") or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if samples != 1 or not photometric.startswith("MONOCHROME"):
            raise DicomError(
                f"{name}: {path.name} is {photometric} with {samples} samples per pixel (RGB/colour); "
                "carve needs one grey value per voxel"
            )
        if not ds.get("Rows") or not ds.get("Columns"):
            raise DicomError(f"{name}: {path.name} has no Rows/Columns (not an image)")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomError(
                f"{name}: inconsistent image size: {path.name} is {ds.Rows}x{ds.Columns}, "
                f"{members[0][0].name} is {first.Rows}x{first.Columns}"
            )
    # decoded size: pydicom unpacks 1-bit data to a byte per pixel, so count at least 8 bits
    total = (
        sum(
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("NumberOfFrames") or 1)
            * max(int(ds.get("BitsAllocated") or 16), 8)
            for _, ds in members
        )
        // 8
    )
    if total > max_bytes:
        raise DicomError(
            f"{name}: headers declare {total / 2**30:.1f} GiB of pixel data (limit "
            f"{max_bytes / 2**30:.1f} GiB); refusing before decoding"
        )


def _output_dtype(stored: list[np.ndarray], frames: list[_Frame]) -> np.dtype:
    """float32 for non-integer rescale parameters, else the narrowest of int16/int32 holding every value."""
    params = np.array([(f.slope, f.intercept) for f in frames])
    if not np.all(params == np.round(params)):
        return np.dtype(np.float32)
    lo, hi = min(int(a.min()) for a in stored), max(int(a.max()) for a in stored)
    ends = np.concatenate([params[:, 0] * lo + params[:, 1], params[:, 0] * hi + params[:, 1]])
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).min <= ends.min() and ends.max() <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.float64)


def _decode(name: str, files: Sequence[Path]) -> dict[Path, np.ndarray]:
    pixels = {}
    for path in files:
        ds = pydicom.dcmread(path)
        try:
            arr = ds.pixel_array
        except Exception as err:
            syntax = ds.file_meta.get("TransferSyntaxUID")
            raise DicomError(
                f"{name}: cannot decode pixel data of {path.name} (transfer syntax "
                f"{getattr(syntax, 'name', syntax)}): {err}"
            ) from None
        pixels[path] = arr.reshape((-1, *arr.shape[-2:]))
    return pixels


def _resample(
    volume: np.ndarray, d_mm: np.ndarray, offsets_mm: np.ndarray, pixel_mm: tuple[float, float], dz_mm: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Interpolate slices at normal positions ``d_mm`` with in-plane shifts ``offsets_mm`` (K, 2) onto an orthogonal
    grid with slice step ``dz_mm``; returns the volume, the in-plane origin shift (2,) in mm and the slice count."""
    n_out = int(np.floor((d_mm[-1] - d_mm[0]) / dz_mm + 1e-3)) + 1
    t = d_mm[0] + dz_mm * np.arange(n_out)
    src = np.interp(t, d_mm, np.arange(len(d_mm)))
    shift = np.stack([np.interp(t, d_mm, offsets_mm[:, a]) for a in (0, 1)], axis=1)
    lo = shift.min(axis=0)
    extent = shift.max(axis=0) - lo + (np.asarray(volume.shape[1:]) - 1) * np.asarray(pixel_mm)
    size = np.floor(extent / np.asarray(pixel_mm) + 1e-3).astype(int) + 1
    grid = np.meshgrid(*(np.arange(s, dtype=float) for s in size), indexing="ij")
    fill = float(volume.min())
    source = volume.astype(np.float64)
    out = np.empty((n_out, *size), dtype=np.float64)
    for m in range(n_out):
        coords = [np.full(size, src[m])] + [(lo[a] + grid[a] * pixel_mm[a] - shift[m, a]) / pixel_mm[a] for a in (0, 1)]
        outside = np.zeros(size, dtype=bool)
        for c, n in zip(coords[1:], volume.shape[1:], strict=True):
            outside |= (c < -1e-6) | (c > n - 1 + 1e-6)
        out[m] = ndimage.map_coordinates(source, coords, order=1, mode="nearest")
        out[m][outside] = fill
    if np.issubdtype(volume.dtype, np.integer):
        out = np.round(out)
    return out.astype(volume.dtype), lo, n_out


def read_dicom_series(
    folder: str | os.PathLike,
    uid: str | None = None,
    description_pattern: str | None = None,
    tilt: Literal["resample", "refuse"] = "resample",
    *,
    uneven_spacing: Literal["refuse", "resample"] = "refuse",
    min_slices: int = 3,
    spacing_rtol: float = 0.05,
    tilt_tolerance_mm: float = 0.01,
    max_bytes: int = MAX_BYTES,
) -> tuple[np.ndarray, Geometry]:
    """Read one series of ``folder`` (see :func:`select_series`) as ``(array (slice, row, column), Geometry)``.

    ``tilt``: gantry tilt (slices shifted in-plane along the stack) is resampled onto an orthogonal grid (linear,
    in-plane only) or refused. ``uneven_spacing``: uneven increments/missing slices are refused, or resampled
    (linear between slices) onto the median increment. Fewer than ``min_slices`` slices are refused.
    """
    folder = Path(folder)
    broken: list[tuple[Path, str]] = []
    groups = _scan(folder, broken)
    if broken:  # which series they belonged to is unknown: reading on could silently drop slices
        listed = ", ".join(f"{p.relative_to(folder)} ({why})" for p, why in broken[:3])
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        raise DicomError(
            f"{folder}: {len(broken)} file(s) look like DICOM but cannot be read (truncated or corrupt): "
            f"{listed}{more}; replace or remove them"
        )
    if not groups:
        raise DicomError(f"{folder}: no DICOM files found")
    info = select_series([_info(u, m) for u, m in groups.items()], uid, description_pattern, folder=folder)
    name = f"{folder}: series {info.uid}" + (f" '{info.description}'" if info.description else "")
    if info.modality.upper() in NON_IMAGE_MODALITIES:
        raise DicomError(f"{name}: is a {info.modality} object, not an image series")
    members = sorted(groups[info.uid], key=lambda pd_: str(pd_[0]))
    _check_headers(name, members, max_bytes)
    frames = [f for path, ds in members for f in _frames(path, ds)]
    for what, attr in (
        ("ImagePositionPatient", "position"),
        ("ImageOrientationPatient", "orientation"),
        ("PixelSpacing", "pixel_spacing"),
    ):
        if (bad := next((f for f in frames if getattr(f, attr) is None), None)) is not None:
            where = f"{bad.path.name}" + (f" frame {bad.frame + 1}" if bad.frame is not None else "")
            raise DicomError(f"{name}: {where} has no usable {what}; cannot place it in space")
    iops = np.array([f.orientation for f in frames])
    if np.abs(iops - iops[0]).max() > 1e-4:
        n_distinct = len({tuple(np.round(o, 3)) for o in iops})
        raise DicomError(
            f"{name}: mixed orientations ({n_distinct} different ImageOrientationPatient values); not one volume"
        )
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise DicomError(f"{name}: inconsistent PixelSpacing between images")
    row = iops[0, :3] / np.linalg.norm(iops[0, :3])
    col = iops[0, 3:] / np.linalg.norm(iops[0, 3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([f.position for f in frames])
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    frames, positions, d = [frames[i] for i in order], positions[order], d[order]
    same = np.flatnonzero(np.diff(d) < 1e-3)
    if same.size:
        dup = [i for i in same if frames[i].sop_uid == frames[i + 1].sop_uid and frames[i].frame == frames[i + 1].frame]
        if len(dup) < same.size:
            n_pos = len(d) - same.size
            raise DicomError(
                f"{name}: {len(d)} images at only {n_pos} slice position(s): several images per "
                "position (echoes, time points or repeats: 4D or not a volume); select one volume"
            )
        keep = np.setdiff1d(np.arange(len(d)), np.asarray(dup) + 1)
        frames, positions, d = [frames[i] for i in keep], positions[keep], d[keep]
    if len(frames) < max(min_slices, 2):
        raise DicomError(
            f"{name}: only {len(frames)} slice(s); a volume needs at least {max(min_slices, 2)} "
            "(single slice or localizer)"
        )
    steps = np.diff(d)
    dz = float(np.median(steps))
    uneven = np.abs(steps - dz) > max(spacing_rtol * dz, 1e-3)
    offsets = (positions - positions[0]) @ np.stack([col, row], axis=1)  # in-plane shift per slice (mm)
    tilted = bool(np.abs(offsets).max() > tilt_tolerance_mm)
    angle = float(np.degrees(np.arctan2(np.linalg.norm(offsets[-1]), d[-1] - d[0])))
    tilt_note = f"gantry tilt of about {angle:.2f} degrees (slice positions not along the slice normal)"
    if uneven.any() and uneven_spacing != "resample":
        raise DicomError(
            f"{name}: uneven slice increments or missing slices: increments along the normal range "
            f"{steps.min():.4g}-{steps.max():.4g} mm (median {dz:.4g} mm, {int(uneven.sum())} differ)"
            + (f"; also {tilt_note}" if tilted else "")
            + "; use uneven_spacing='resample' to interpolate onto the median increment"
        )
    if tilted and tilt != "resample":
        raise DicomError(f"{name}: {tilt_note}; use tilt='resample' to resample onto an orthogonal grid")
    pixels = _decode(name, sorted({f.path for f in frames}))
    stored = [pixels[f.path][f.frame or 0] for f in frames]
    dtype = _output_dtype(stored, frames)
    volume = np.empty((len(frames), *stored[0].shape), dtype=dtype)
    for k, (f, a) in enumerate(zip(frames, stored, strict=True)):
        volume[k] = (
            a.astype(np.float64) * f.slope + f.intercept
            if dtype.kind == "f"
            else a.astype(np.int64) * int(f.slope) + int(f.intercept)
        )
    pixel_mm = (float(spacings[0, 0]), float(spacings[0, 1]))
    origin = positions[0]
    if tilted or uneven.any():
        volume, lo, n_out = _resample(volume, d, offsets, pixel_mm, dz)
        origin = positions[0] + lo[0] * col + lo[1] * row
        why = " and ".join(w for w, on in ((f"tilt {angle:.2f} deg", tilted), ("uneven spacing", uneven.any())) if on)
        shapes = f"{len(frames)}x{stored[0].shape[0]}x{stored[0].shape[1]} -> {'x'.join(map(str, volume.shape))}"
        log.info("%s: resampled onto an orthogonal grid (%s): %s voxels", name, why, shapes)
    geometry = Geometry(
        spacing_mm=(dz, *pixel_mm),
        origin_mm=tuple(origin),
        direction=tuple(map(tuple, np.stack([normal, col, row], axis=1))),
    )
    spacing = tuple(round(v, 4) for v in geometry.spacing_mm)
    log.info("%s: read %s volume %s, spacing %s mm", name, volume.dtype, volume.shape, spacing)
    return volume, geometry
