"""Image I/O and carve's one orientation convention.

Convention (used by every module of carve):

* A volume is a numpy array indexed ``array[a0, a1, a2]`` in SimpleITK's numpy order, that is
  ``(z, y, x)`` of the file's voxel grid.
* :class:`Geometry` describes where each voxel lies in patient space, per *array* axis:
  ``spacing_mm[a]`` is the distance between neighbours along array axis ``a``;
  ``direction[:, a]`` is the unit vector (LPS, DICOM patient coordinates) of array axis ``a``;
  ``origin_mm`` is the LPS position of the centre of voxel ``[0, 0, 0]``.
* ``geometry.affine`` maps homogeneous array indices ``(a0, a1, a2, 1)`` to LPS millimetres.

NIfTI files store RAS; SimpleITK converts on read and write, so arrays and geometries seen by carve
are always LPS. Writes are atomic: a file either exists complete or not at all.

Every NIfTI carve reads has its placement checked against its own header (nibabel, header only): a sheared
(non-orthonormal) sform, which ITK would read on an orthogonal grid, and any geometry of ITK's that puts the
voxels elsewhere than the header does (e.g. ITK took the qform where the sform disagrees) are refused with an
:class:`ImageReadError` naming the file, never read as a silently moved volume.
"""

from __future__ import annotations

import errno
import glob
import gzip
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from carve.errors import CarveError, WriteError

if TYPE_CHECKING:
    from nibabel.nifti1 import Nifti1Header

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_DEFLATE_RATIO = 1032  # gzip (deflate) cannot shrink data more than this (RFC 1951: 258 bytes per 2 bits at best)
# How far a NIfTI's voxel axes may depart from perpendicular: |cos| between two axes (1e-3 is 0.057 degrees).
# Real headers are orthonormal to about 1e-4 (direction cosines written with 5-6 decimals, stored as float32).
NIFTI_SKEW_TOLERANCE = 1e-3
# How far ITK may put a voxel from where the header puts it: 1e-3 mm plus this times the volume's extent
# (the largest distance, in mm, from voxel 0 to a corner). Orthogonalising axes skewed by the tolerance above
# (as ITK does) moves a voxel by about half the skew times its distance from voxel 0: 0.15 mm across 300 mm.
NIFTI_POSITION_TOLERANCE_MM = 1e-3
NIFTI_POSITION_RELATIVE_TOLERANCE = NIFTI_SKEW_TOLERANCE / 2

log = logging.getLogger("carve.imaging.io")


class ImageReadError(CarveError, ValueError):
    """An image file that cannot be read as a 3D volume."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid placement in LPS patient space, per array axis (see module docstring)."""

    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(o) for o in self.origin_mm))
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in d))
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from homogeneous array indices to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """Map an (N, 3) array of (continuous) array indices to (N, 3) LPS millimetres."""
        idx = np.asarray(indices, dtype=float).reshape(-1, 3)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_mm, dtype=float).reshape(-1, 3)
        return (pts - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def with_spacing(self, spacing_mm: Sequence[float]) -> Geometry:
        return Geometry(tuple(spacing_mm), self.origin_mm, self.direction)

    def is_close(self, other: Geometry, tolerance_mm: float = 1e-3, shape: Sequence[int] | None = None) -> bool:
        """True when both grids put every voxel of ``shape`` within ``tolerance_mm`` of each other."""
        shape = shape or (1, 1, 1)
        corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
        return bool(np.abs(self.index_to_world(corners) - other.index_to_world(corners)).max() <= tolerance_mm)

    # ---- SimpleITK bridge -------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        d_ijk = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        return cls(
            spacing_mm=tuple(image.GetSpacing()[::-1]),
            origin_mm=tuple(image.GetOrigin()),
            direction=tuple(map(tuple, d_ijk[:, ::-1])),
        )

    def apply_to_sitk(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(tuple(self.spacing_mm[::-1]))
        image.SetOrigin(tuple(self.origin_mm))
        image.SetDirection(tuple(self.direction_matrix[:, ::-1].ravel()))
        return image

    def to_json(self) -> dict:
        return {
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": [list(r) for r in self.direction],
        }

    @classmethod
    def from_json(cls, d: dict) -> Geometry:
        return cls(tuple(d["spacing_mm"]), tuple(d["origin_mm"]), tuple(map(tuple, d["direction"])))


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply_to_sitk(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _itk_reason(err: RuntimeError) -> str:
    """The telling line of an ITK exception: its last, unless that is a stale errno ('Reason: No such file')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith("Reason:")]
    return re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", lines[-1]) if lines else "unknown error"


def _size(n: int) -> str:
    return f"{n} bytes" if n < 2**20 else f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def _gunzipped_size(path: Path) -> int:
    """Bytes in a gzip file once decompressed, read in chunks (constant memory); corrupt or cut streams raise."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ImageReadError(f"{path}: truncated or corrupt gzip data ({err}); the file is damaged") from None
    return total


def check_nifti_data(path: str | os.PathLike, full: bool = True) -> None:
    """Refuse a NIfTI file (.nii, .nii.gz) that holds less voxel data than its header declares.

    ITK reads such a file without a word and fills the missing voxels with zeros. Only the header is parsed and
    the data counted (a .nii.gz is decompressed in chunks, which also checks its CRC), so a header that declares
    an absurd size is refused before any memory is allocated for it. With ``full=False`` a .nii.gz is only checked
    against the size its gzip trailer records (enough for a file carve has just written; a cut stream matches it
    by chance once in 2**32). Other formats, missing and empty files are left to the reader."""
    path = Path(path)
    gz = str(path).lower().endswith(".nii.gz")
    if not (gz or str(path).lower().endswith(".nii")) or not path.is_file() or path.stat().st_size == 0:
        return
    import nibabel as nib

    try:
        proxy = nib.load(str(path)).dataobj  # the file's own offset (the image's header copy says 0)
        shape, dtype, offset = tuple(proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    except Exception as err:  # nibabel raises several kinds (ImageFileError, EOFError, struct errors...)
        text = " ".join(str(err).split()) or type(err).__name__
        raise ImageReadError(f"{path}: cannot be read as NIfTI ({text})") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    declared = f"the header declares {'x'.join(map(str, shape))} voxels of {dtype} ({_size(expected)})"
    if gz and offset + expected > MAX_DEFLATE_RATIO * size + 4096:
        raise ImageReadError(f"{path}: {declared} but the compressed file has only {_size(size)}; truncated or corrupt")
    if gz and not full:
        with path.open("rb") as fh:
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") != (offset + expected) % 2**32:
                raise ImageReadError(f"{path}: truncated: its gzip trailer does not match what {declared}")
        return
    have = (_gunzipped_size(path) if gz else size) - offset
    if have < expected:
        raise ImageReadError(f"{path}: truncated: {declared}, the file holds {_size(max(have, 0))} of them")


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_FIX = (
    "make sform, qform and pixdim agree with nibabel, keeping the placement that is right (the sform: "
    "img = nibabel.load(f); img.set_qform(img.get_sform()); nibabel.save(img, f), which also sets pixdim; the "
    "qform: img.set_sform(img.get_qform()) instead), or resample the image onto an orthogonal grid "
    "(e.g. nibabel.processing.resample_to_output(img))"
)


def _nifti_header(path: Path) -> Nifti1Header | None:
    """The header of a NIfTI-1/2 file (nibabel reads the header only), or None for other formats and for files
    nibabel cannot parse (their errors are left to ITK's reader, which names them)."""
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception:  # nibabel raises several kinds (ImageFileError, EOFError, struct errors...)
        return None
    return image.header if isinstance(image, nib.Nifti1Image) else None  # Nifti2Image is a Nifti1Image


def _corners(shape: Sequence[int]) -> np.ndarray:
    """(8, 3) index coordinates of the corner voxels of a 3D grid (NIfTI / ITK index order)."""
    return np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)


def _apart_mm(a: np.ndarray, b: np.ndarray, corners: np.ndarray) -> float:
    """Largest distance (mm) between where two 4x4 index-to-world matrices put the corner voxels."""
    return float(np.linalg.norm(corners @ (a[:3, :3] - b[:3, :3]).T + (a[:3, 3] - b[:3, 3]), axis=1).max())


def _nifti_forms(header: Nifti1Header) -> dict[str, tuple[int, np.ndarray]]:
    """The header's placements that are set (code > 0), by name: (code, 4x4 LPS index-to-world matrix)."""
    forms = {}
    for name in ("sform", "qform"):
        code = int(header[f"{name}_code"])
        if code > 0:
            ras = header.get_sform() if name == "sform" else header.get_qform()
            forms[name] = (code, _RAS_TO_LPS @ np.asarray(ras, dtype=float))
    return forms


def _skew_degrees(matrix: np.ndarray) -> float:
    """The largest departure from perpendicular (degrees) between two columns of a 3x3 matrix."""
    unit = matrix / np.linalg.norm(matrix, axis=0)
    cosines = np.abs(unit.T @ unit - np.eye(3)).max()
    return float(np.degrees(np.arcsin(min(cosines, 1.0))))


def _refuse_skewed_nifti(path: Path, header: Nifti1Header, shape: Sequence[int]) -> None:
    """Refuse a NIfTI whose placement (the sform when set, as nibabel reads it) is degenerate or sheared."""
    forms = _nifti_forms(header)
    if not forms:
        return  # neither form set: the header places nothing (ITK: origin 0, identity direction, pixdim spacing)
    name = "sform" if "sform" in forms else "qform"
    code, affine = forms[name]
    matrix = affine[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if not np.isfinite(affine).all() or norms.min() <= 0 or abs(np.linalg.det(matrix)) <= 1e-12 * norms.prod():
        raise ImageReadError(
            f"{path}: the NIfTI header's {name} ({name}_code {code}) is degenerate (not finite or singular); "
            f"it places no 3D grid: {_NIFTI_FIX}"
        )
    skew, allowed = _skew_degrees(matrix), float(np.degrees(np.arcsin(NIFTI_SKEW_TOLERANCE)))
    if skew <= allowed:
        return
    corners = _corners(shape)
    if name == "sform" and "qform" in forms:
        off = _apart_mm(affine, forms["qform"][1], corners)
        moved = f"ITK would read it by its qform (qform_code {forms['qform'][0]}) instead, which puts voxels"
    else:
        u, _, vt = np.linalg.svd(matrix / norms)
        orthogonal = affine.copy()
        orthogonal[:3, :3] = (u @ vt) * norms
        off = _apart_mm(affine, orthogonal, corners)
        moved = "On an orthogonal grid (ITK coerces it to one, or refuses it) voxels would lie"
    raise ImageReadError(
        f"{path}: the NIfTI header's {name} ({name}_code {code}) is not orthonormal: its voxel axes are sheared "
        f"(skewed) {skew:.3g} degrees from perpendicular (carve allows {allowed:.2g} degrees). {moved} up to "
        f"{off:.3g} mm from where the {name} puts them; carve refuses it rather than segment a moved volume. "
        "Resample the image onto an orthogonal grid (e.g. nibabel.processing.resample_to_output(img)) or, if the "
        f"shear is an error in the header, fix the {name} with nibabel and save the file again"
    )


def _itk_affine(image: sitk.Image) -> np.ndarray:
    """4x4 LPS matrix from ITK index (i, j, k) to millimetres, of the first three axes of ``image``."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing()[:3], dtype=float)[None, :]
    affine[:3, 3] = image.GetOrigin()[:3]
    return affine


def _check_itk_nifti_geometry(path: Path, header: Nifti1Header, image: sitk.Image) -> None:
    """Refuse a NIfTI that ITK placed elsewhere than its header does (beyond the tolerance, at the corners)."""
    forms = _nifti_forms(header)
    if not forms or image.GetDimension() < 3:
        return
    name = "sform" if "sform" in forms else "qform"  # nibabel's choice, and the NIfTI convention's
    code, affine = forms[name]
    itk = _itk_affine(image)
    corners = _corners(image.GetSize()[:3])
    extent = float(np.linalg.norm(corners @ affine[:3, :3].T, axis=1).max())
    tolerance = NIFTI_POSITION_TOLERANCE_MM + NIFTI_POSITION_RELATIVE_TOLERANCE * extent
    off = _apart_mm(itk, affine, corners)
    other = "qform" if name == "sform" else "sform"
    if off <= tolerance:
        if other in forms and (apart := _apart_mm(affine, forms[other][1], corners)) > tolerance:
            log.warning(
                "%s: the NIfTI header's sform and qform disagree by up to %.3g mm at the volume's corners; carve "
                "(ITK) uses the %s (%s_code %d), as nibabel does",
                path,
                apart,
                name,
                name,
                code,
            )
        return
    why = []
    if other in forms and _apart_mm(itk, forms[other][1], corners) <= tolerance:
        apart = _apart_mm(affine, forms[other][1], corners)
        why.append(
            f"ITK took the {other} ({other}_code {forms[other][0]}), which disagrees with the {name} by up to "
            f"{apart:.3g} mm"
        )
    spacing_itk = np.asarray(image.GetSpacing()[:3], dtype=float)
    spacing_header = np.linalg.norm(affine[:3, :3], axis=0)
    if np.abs(spacing_itk - spacing_header).max() > 1e-4 * spacing_header.max():
        why.append(
            f"ITK's voxel size {_round(spacing_itk)} mm (from pixdim) is not the {name}'s {_round(spacing_header)} mm"
        )
    reason = f": {'; '.join(why)}" if why else ""
    raise ImageReadError(
        f"{path}: ITK, which carve reads images with, places the voxels of this NIfTI up to {off:.3g} mm from where "
        f"its header's {name} ({name}_code {code}) does, at the volume's corners (carve allows {tolerance:.2g} "
        f"mm){reason}. carve refuses it rather than segment a moved volume: {_NIFTI_FIX}"
    )


def _round(values: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def _read_scalar(path: Path) -> sitk.Image:
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    header = _nifti_header(path)
    if header is not None:  # before ITK, which would read a sheared sform on an orthogonal grid (or fail obscurely)
        shape = ([max(int(n), 1) for n in header.get_data_shape()] + [1, 1, 1])[:3]
        _refuse_skewed_nifti(path, header, shape)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImageReadError(f"{path}: cannot be read as an image ({_itk_reason(err)})") from None
    if header is not None:
        _check_itk_nifti_geometry(path, header, image)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); "
            "carve needs a scalar 3D volume"
        )
    return image


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI/NRRD/MHA file as (array in (z, y, x) order, LPS geometry).

    Raises :class:`ImageReadError` naming the file for unreadable, non-3D or multi-component images.
    """
    path = Path(path)
    image = _read_scalar(path)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise ImageReadError(
            f"{path}: is {dim}D with size {image.GetSize()}; carve needs a 3D volume "
            "(a 4D image with one volume per channel needs the config's `channels`)"
        )
    return from_sitk(image)


def read_channels(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D or 4D image as (C, z, y, x): a 3D file is one channel, a 4D file one channel per volume
    (the 4th NIfTI dimension, as in the Medical Segmentation Decathlon's multi-modal images)."""
    path = Path(path)
    image = _read_scalar(path)
    dim = image.GetDimension()
    if dim == 3:
        array, geometry = from_sitk(image)
        return array[None], geometry
    if dim != 4:
        raise ImageReadError(f"{path}: is {dim}D with size {image.GetSize()}; carve needs a 3D or 4D volume")
    volumes = [image[:, :, :, c] for c in range(image.GetSize()[3])]
    geometry = Geometry.from_sitk(volumes[0])
    return np.stack([sitk.GetArrayFromImage(v) for v in volumes]), geometry


def write_channels(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write (C, z, y, x) atomically: one channel as a 3D image, several as a 4D image (channels last)."""
    if array.ndim != 4 or array.shape[0] < 1:
        raise ValueError(f"write_channels expects a (C, z, y, x) array, got shape {array.shape}")
    if array.shape[0] == 1:
        return write_image(path, array[0], geometry, compress)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    joined = sitk.JoinSeries([to_sitk(c, geometry) for c in array])
    return _atomic_sitk_write(Path(path), joined, compress)


def _temporary(path: Path, suffix: str = "") -> tuple[int, str]:
    """A temporary file beside ``path`` (hidden: ``.<name>.XXXX``), after removing those a killed writer left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared as any other file would be
    return fd, tmp


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Re-raise an OSError of writing ``path`` as one that names it (errno and class kept)."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        blocking = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if err.errno in (errno.EEXIST, errno.ENOTDIR) and blocking is not None:  # a file where a folder must be
            reason = f"{blocking} is a file, not a folder"
        elif err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason += " (disk full, quota or file size limit reached)"
        message = f"cannot write {path}: {reason}"
        raise (WriteError(err.errno, message) if err.errno is not None else WriteError(message)) from err


def _check_written(path: Path) -> None:
    """The quick check of a just-written NIfTI (gzip trailer); only if it objects, the full count decides."""
    try:
        check_nifti_data(path, full=False)
    except ImageReadError:
        check_nifti_data(path, full=True)


def _atomic_sitk_write(path: Path, image: sitk.Image, compress: bool) -> Path:
    suffix = next((s for s in IMAGE_SUFFIXES if str(path).lower().endswith(s)), path.suffix)
    with _writing(path):
        fd, tmp = _temporary(path, suffix)
        os.close(fd)
        try:
            try:
                sitk.WriteImage(image, tmp, useCompression=compress)
            except RuntimeError as err:
                raise OSError(errno.EIO, f"ITK could not write it ({_itk_reason(err)})") from None
            try:  # ITK's NIfTI writer ignores failed writes (a full disk): check before the file takes its name
                _check_written(Path(tmp))
            except ImageReadError as err:
                raise OSError(errno.EIO, f"the written file came out incomplete (disk full?): {err}") from None
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write ``array`` with ``geometry`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim != 3:
        raise ValueError(f"write_image expects a 3D array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return _atomic_sitk_write(path, to_sitk(array, geometry), compress)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to ``path`` atomically."""
    path = Path(path)
    with _writing(path):
        fd, tmp = _temporary(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
