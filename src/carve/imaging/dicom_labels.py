"""Labels from DICOM: a DICOM-SEG or RTSTRUCT object read as a label volume on a converted image's grid.

The image grid is the one :func:`carve.imaging.dicom.read_dicom_series` returns for the image series (see
:mod:`carve.imaging.io`
for the convention). Objects are placed by patient position (LPS mm), never by file or frame order:

* DICOM-SEG (BINARY, FRACTIONAL or LABELMAP; read with highdicom): each segment's frames are taken as a volume
  (``Segmentation.get_volume``); every plane holding foreground must coincide with one of the image's slice planes
  (within ``plane_tolerance_mm``), and in-plane each image pixel takes the nearest SEG pixel (identical grids are
  copied exactly; a SEG stored at another in-plane resolution or field of view is resampled, nearest).
  FRACTIONAL segments are thresholded at one half.
* RTSTRUCT (pydicom): each CLOSED_PLANAR contour must lie in one image slice plane; it is mapped into the image
  grid (:meth:`carve.imaging.io.Geometry.world_to_index`) and filled with ``skimage.draw.polygon`` (pixels whose
  centre is
  inside); the contours of one ROI on one slice are combined by XOR, so nested contours make holes.

Segment/ROI names are matched to the config's label names (case-insensitive); a segment number / ROI number equal
to a label value is accepted when no name matches. Voxels claimed by segments of several labels get the highest
label value (with a warning that counts them). Every refusal is a :class:`carve.imaging.dicom.DicomError` naming
the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from skimage.draw import polygon

from carve.imaging.dicom import DicomError, find_series
from carve.imaging.io import Geometry

__all__ = ["LABEL_MODALITIES", "find_label_object", "match_segments", "read_label_object"]

log = logging.getLogger("carve.imaging.dicom")

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
LABEL_MODALITIES = {"SEG": SEG_SOP_CLASS, "RTSTRUCT": RTSTRUCT_SOP_CLASS}


def _modality(ds: pydicom.Dataset) -> str | None:
    modality = str(ds.get("Modality", "")).upper()
    if modality in LABEL_MODALITIES:
        return modality
    sop_class = str(ds.get("SOPClassUID", ""))
    return next((m for m, uid in LABEL_MODALITIES.items() if uid == sop_class), None)


def find_label_object(path: str | os.PathLike) -> Path | None:
    """The DICOM-SEG or RTSTRUCT file at ``path`` (a file, or a folder holding exactly one such object).

    Returns None when ``path`` is neither such a file nor a folder holding one; raises :class:`DicomError` when a
    folder holds several (they are listed).
    """
    path = Path(path)
    if path.is_file():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM at all
            return None
        return path if _modality(ds) else None
    if not path.is_dir():
        return None
    found = [f for s in find_series(path) if s.modality.upper() in LABEL_MODALITIES for f in s.files]
    if len(found) > 1:
        listing = ", ".join(str(f.relative_to(path)) for f in sorted(found))
        raise DicomError(f"{path}: holds {len(found)} DICOM-SEG/RTSTRUCT objects ({listing}); give one file")
    return found[0] if found else None


def read_label_object(
    path: str | os.PathLike,
    reference_shape: Sequence[int],
    reference_geometry: Geometry,
    label_values: Mapping[int, str],
    *,
    plane_tolerance_mm: float = 0.1,
    frame_of_reference_uid: str | None = None,
) -> np.ndarray:
    """Read a DICOM-SEG or RTSTRUCT (file, or folder holding exactly one) as a uint8 label volume on the image grid.

    ``label_values`` maps label value -> name (the config's labels). ``frame_of_reference_uid`` (the image
    series') is compared with the object's; a difference is logged as a warning (objects are placed by patient
    position either way). See the module docstring for placement, name matching and overlaps.
    """
    file = find_label_object(path)
    if file is None:
        raise DicomError(f"{path}: not a DICOM-SEG or RTSTRUCT file, nor a folder holding one")
    shape = tuple(int(s) for s in reference_shape)
    if len(shape) != 3:
        raise ValueError(f"reference_shape must be 3D, got {reference_shape}")
    header = pydicom.dcmread(file, stop_before_pixels=True)
    modality = _modality(header)
    where = f"{file} ({modality})"
    if modality == "SEG":
        fors = [str(header.get("FrameOfReferenceUID", ""))]
        segments, mask_of = _seg_reader(file, where, shape, reference_geometry, plane_tolerance_mm)
    else:
        fors = [str(f.get("FrameOfReferenceUID", "")) for f in header.get("ReferencedFrameOfReferenceSequence", [])]
        segments, mask_of = _rtstruct_reader(file, where, shape, reference_geometry, plane_tolerance_mm)
    if frame_of_reference_uid and not any(f == frame_of_reference_uid for f in fors):
        log.warning(
            "%s: frame of reference %s differs from the image's %s; placing it by patient position anyway",
            where,
            ", ".join(f for f in fors if f) or "(none)",
            frame_of_reference_uid,
        )
    mapping = match_segments(segments, label_values, where)
    labels = np.zeros(shape, dtype=np.uint8)
    overlap = np.zeros(shape, dtype=bool)
    for number, value in sorted(mapping.items(), key=lambda nv: (nv[1], nv[0])):  # ascending: highest wins
        mask = mask_of(number)
        overlap |= mask & (labels > 0) & (labels != value)
        labels[mask] = value
    if (n_overlap := int(overlap.sum())) > 0:
        log.warning(
            "%s: %d voxel(s) are claimed by segments of several labels; each got the highest label value",
            where,
            n_overlap,
        )
    counts = {label_values[v]: int((labels == v).sum()) for v in sorted(set(mapping.values())) if v}
    log.info("%s: read %d segment(s) onto the image grid %s, voxels per label %s", where, len(mapping), shape, counts)
    return labels


def match_segments(segments: Sequence[tuple[int, str]], label_values: Mapping[int, str], where: str) -> dict[int, int]:
    """Map each (segment number, name) to a label value: by name (case-insensitive), else by number."""
    by_name: dict[str, int] = {}
    for value, name in sorted(label_values.items()):
        by_name.setdefault(str(name).strip().lower(), int(value))
    mapping = {n: by_name[name.strip().lower()] for n, name in segments if name.strip().lower() in by_name}
    named = set(mapping.values())
    unmatched = []
    for number, name in segments:
        if number in mapping:
            continue
        if number in label_values and number not in named:
            mapping[number] = int(number)
            log.warning(
                "%s: segment %d '%s' matches no label name; taken as label %d '%s' by its number",
                where,
                number,
                name,
                number,
                label_values[number],
            )
        else:
            unmatched.append((number, name))
    if unmatched or not segments:
        found = ", ".join(f"{n} '{name}'" for n, name in segments) or "none"
        expected = ", ".join(f"{v} '{name}'" for v, name in sorted(label_values.items()))
        what = ", ".join(f"{n} '{name}'" for n, name in unmatched)
        problem = f"segment(s) {what} match no label of the config" if unmatched else "holds no segment"
        raise DicomError(
            f"{where}: {problem} (matched by name, case-insensitive, or by a segment number equal to a label "
            f"value); segments found: {found}; labels expected: {expected}"
        )
    return mapping


# ---- DICOM-SEG ----------------------------------------------------------------------------------------------
def _seg_reader(
    file: Path, where: str, shape: tuple[int, ...], geometry: Geometry, tolerance_mm: float
) -> tuple[list[tuple[int, str]], Callable[[int], np.ndarray]]:
    import highdicom as hd

    try:
        seg = hd.seg.segread(file)
        numbers = [int(n) for n in seg.get_segment_numbers() if int(n) != 0]  # LABELMAP may describe background 0
        segments = [(n, str(seg.get_segment_description(n).segment_label)) for n in numbers]
    except Exception as err:
        raise DicomError(f"{where}: cannot be read as a segmentation: {err}") from None

    def mask_of(number: int) -> np.ndarray:
        try:
            volume = seg.get_volume(segment_numbers=[number], combine_segments=False, rescale_fractional=True)
        except Exception as err:
            raise DicomError(f"{where}: segment {number}: frames do not form a volume ({err})") from None
        array = np.asarray(volume.array).reshape(volume.array.shape[:3])
        return _volume_to_grid(array >= 0.5, volume.affine, shape, geometry, tolerance_mm, f"{where}: segment {number}")

    return segments, mask_of


def _volume_to_grid(
    mask: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], geometry: Geometry, tolerance_mm: float, where: str
) -> np.ndarray:
    """Place the planes of ``mask`` (placed by ``affine``) that hold foreground on the image slices (nearest)."""
    to_image = np.linalg.inv(geometry.affine) @ np.asarray(affine, dtype=float)
    to_mask = np.linalg.inv(to_image)
    out = np.zeros(shape, dtype=bool)
    rows, cols = np.meshgrid(np.arange(shape[1], dtype=float), np.arange(shape[2], dtype=float), indexing="ij")
    n_r, n_c = mask.shape[1:]
    dropped = 0
    for i in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        corners = np.array([[i, r, c, 1.0] for r in (0, n_r - 1) for c in (0, n_c - 1)]) @ to_image.T
        k = int(np.rint(corners[:, 0].mean()))
        off_mm = float(np.abs(corners[:, 0] - k).max() * geometry.spacing_mm[0])
        if off_mm > tolerance_mm:
            raise DicomError(
                f"{where}: plane {i} lies up to {off_mm:.3g} mm off the image's slice planes (tolerance "
                f"{tolerance_mm:g} mm): the object does not lie on this image's slices"
            )
        fg = np.argwhere(mask[i])
        at = np.column_stack([np.full(len(fg), i), fg, np.ones(len(fg))]) @ to_image.T
        outside = (np.rint(at[:, :3]) < 0) | (np.rint(at[:, :3]) > np.asarray(shape) - 1)
        dropped += int(outside.any(axis=1).sum())
        if not 0 <= k < shape[0]:
            continue
        shift = to_mask[1:3, 0] * k + to_mask[1:3, 3]  # mask (row, column) of image pixel (0, 0)
        if np.allclose(to_mask[1:3, 1:3], np.eye(2), atol=1e-6) and np.allclose(shift, np.rint(shift), atol=1e-3):
            dr, dc = (int(v) for v in np.rint(shift))  # same pixel grid, shifted by whole pixels: copy
            r0, r1, c0, c1 = max(0, -dr), min(shape[1], n_r - dr), max(0, -dc), min(shape[2], n_c - dc)
            if r0 < r1 and c0 < c1:
                out[k, r0:r1, c0:c1] |= mask[i, r0 + dr : r1 + dr, c0 + dc : c1 + dc]
            continue
        src = [np.rint(shift[a] + to_mask[a + 1, 1] * rows + to_mask[a + 1, 2] * cols) for a in (0, 1)]
        inside = (src[0] >= 0) & (src[0] < n_r) & (src[1] >= 0) & (src[1] < n_c)
        out[k][inside] |= mask[i][src[0][inside].astype(int), src[1][inside].astype(int)]
    if dropped:
        log.warning("%s: %d foreground pixel(s) lie outside the image and were dropped", where, dropped)
    return out


# ---- RTSTRUCT -----------------------------------------------------------------------------------------------
def _rtstruct_reader(
    file: Path, where: str, shape: tuple[int, ...], geometry: Geometry, tolerance_mm: float
) -> tuple[list[tuple[int, str]], Callable[[int], np.ndarray]]:
    try:
        ds = pydicom.dcmread(file)
        segments = [(int(r.ROINumber), str(r.get("ROIName", ""))) for r in ds.get("StructureSetROISequence", [])]
        contours = {
            int(rc.ReferencedROINumber): list(rc.get("ContourSequence", [])) for rc in ds.get("ROIContourSequence", [])
        }
    except Exception as err:
        raise DicomError(f"{where}: cannot be read as a structure set: {err}") from None

    def mask_of(number: int) -> np.ndarray:
        return _rasterise(contours.get(number, []), shape, geometry, tolerance_mm, f"{where}: ROI {number}")

    return segments, mask_of


def _rasterise(
    contours: Sequence[pydicom.Dataset], shape: tuple[int, ...], geometry: Geometry, tolerance_mm: float, where: str
) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    skipped: dict[str, int] = {}
    outside = 0
    for j, item in enumerate(contours):
        kind = str(item.get("ContourGeometricType", "")).upper()
        data = np.asarray(item.get("ContourData") or [], dtype=float)
        if kind != "CLOSED_PLANAR" or data.size < 9 or data.size % 3:
            skipped[kind or "empty"] = skipped.get(kind or "empty", 0) + 1
            continue
        index = geometry.world_to_index(data.reshape(-1, 3))
        k = int(np.rint(np.median(index[:, 0])))
        off_mm = float(np.abs(index[:, 0] - k).max() * geometry.spacing_mm[0])
        if off_mm > tolerance_mm:
            raise DicomError(
                f"{where}: contour {j + 1} lies up to {off_mm:.3g} mm off the image's slice planes (tolerance "
                f"{tolerance_mm:g} mm): the structure set does not lie on this image's slices"
            )
        if not 0 <= k < shape[0]:
            outside += 1
            continue
        rr, cc = polygon(index[:, 1], index[:, 2], shape=shape[1:])
        out[k][rr, cc] ^= True  # XOR: a contour inside another one is a hole
    if skipped:
        log.warning("%s: skipped contours that do not enclose an area: %s", where, skipped)
    if outside:
        log.warning("%s: %d contour(s) lie on planes outside the image and were dropped", where, outside)
    return out
