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
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class ImageReadError(ValueError):
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


def _read_scalar(path: Path) -> sitk.Image:
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise ImageReadError(f"{path}: cannot be read as an image ({first})") from None
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
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)


def _atomic_sitk_write(path: Path, image: sitk.Image, compress: bool) -> Path:
    suffix = next((s for s in IMAGE_SUFFIXES if str(path).lower().endswith(s)), path.suffix)
    fd, tmp = _temporary(path, suffix)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=compress)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write ``array`` with ``geometry`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
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
