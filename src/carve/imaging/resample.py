"""Resampling between a case's own grid and the plan's target spacing.

Images use third-order splines in-plane; when the grid is anisotropic (coarsest spacing more than
``ANISOTROPY_RATIO`` times the finest) the coarse axis is interpolated separately and linearly, so that
thick slices do not ring (nnU-Net also treats that axis separately, but with nearest neighbour by default:
bench/results/resampling.md measures the difference). Labels go through one-hot linear interpolation and an
argmax, which keeps thin structures that nearest-neighbour resampling would break.

Grids are aligned by their outer voxel *edges* (``grid_mode=True`` in scipy's terms): the resampled
volume covers the same physical extent, and :func:`resampled_geometry` returns its exact placement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from carve.imaging.io import Geometry

ANISOTROPY_RATIO = 3.0


def target_shape(shape: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]) -> tuple:
    """Shape of the grid that covers the same extent at ``target_spacing_mm`` (at least 1 voxel)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_mm, target_spacing_mm, strict=True))


def resampled_geometry(geometry: Geometry, shape: Sequence[int], new_shape: Sequence[int]) -> Geometry:
    """Geometry of ``new_shape`` voxels spanning the same extent as ``shape`` voxels of ``geometry``."""
    scale = np.asarray(shape, dtype=float) / np.asarray(new_shape, dtype=float)
    spacing = np.asarray(geometry.spacing_mm) * scale
    first_centre = 0.5 * scale - 0.5  # index (in the old grid) of the new voxel [0, 0, 0]
    origin = geometry.index_to_world(first_centre[None, :])[0]
    return Geometry(tuple(spacing), tuple(origin), geometry.direction)


def _anisotropic_axis(spacing_mm: Sequence[float]) -> int | None:
    s = np.asarray(spacing_mm, dtype=float)
    if s.max() / s.min() > ANISOTROPY_RATIO:
        return int(np.argmax(s))
    return None


def _zoom_exact(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(new_shape, array.shape, strict=True)]
    if all(f == 1 for f in factors):
        return array
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(new_shape):  # guard against floating point in zoom's own rounding
        raise RuntimeError(f"resampling produced {out.shape}, expected {tuple(new_shape)}")
    return out


def resize_image(
    array: np.ndarray, new_shape: Sequence[int], spacing_mm: Sequence[float], order: int = 3
) -> np.ndarray:
    """Resize a 3D float image to ``new_shape`` (separate linear pass along a coarse anisotropic axis)."""
    array = np.asarray(array, dtype=np.float32)
    if tuple(array.shape) == tuple(new_shape):
        return array.copy()
    axis = _anisotropic_axis(spacing_mm)
    if axis is None or order <= 1:
        return _zoom_exact(array, new_shape, order)
    in_plane = list(new_shape)
    in_plane[axis] = array.shape[axis]
    out = _zoom_exact(array, in_plane, order)
    return _zoom_exact(out, new_shape, 1)


def resize_probabilities(probabilities: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Resize (C, z, y, x) class probabilities linearly, one class at a time, keeping the dtype."""
    out = np.empty((probabilities.shape[0], *new_shape), dtype=probabilities.dtype)
    for c in range(probabilities.shape[0]):
        out[c] = _zoom_exact(probabilities[c].astype(np.float32), new_shape, 1)
    return out


def resize_labels(labels: np.ndarray, new_shape: Sequence[int], values: Sequence[int] | None = None) -> np.ndarray:
    """Resize an integer label map through one-hot linear interpolation and argmax."""
    labels = np.asarray(labels)
    if tuple(labels.shape) == tuple(new_shape):
        return labels.copy()
    values = sorted(set(np.unique(labels).tolist()) | {0}) if values is None else sorted(values)
    best = np.full(tuple(new_shape), -1.0, dtype=np.float32)
    out = np.zeros(tuple(new_shape), dtype=labels.dtype)
    for v in values:
        p = _zoom_exact((labels == v).astype(np.float32), new_shape, 1)
        take = p > best
        out[take] = v
        best[take] = p[take]
    return out


def resample_image(
    array: np.ndarray, geometry: Geometry, target_spacing_mm: Sequence[float], order: int = 3
) -> tuple[np.ndarray, Geometry]:
    """Resample an image to ``target_spacing_mm``; returns the array and its exact geometry."""
    new_shape = target_shape(array.shape, geometry.spacing_mm, target_spacing_mm)
    out = resize_image(array, new_shape, geometry.spacing_mm, order=order)
    return out, resampled_geometry(geometry, array.shape, new_shape)


def resample_labels(
    labels: np.ndarray,
    geometry: Geometry,
    target_spacing_mm: Sequence[float],
    values: Sequence[int] | None = None,
) -> tuple[np.ndarray, Geometry]:
    new_shape = target_shape(labels.shape, geometry.spacing_mm, target_spacing_mm)
    return resize_labels(labels, new_shape, values), resampled_geometry(geometry, labels.shape, new_shape)


def resample_to_reference(
    array: np.ndarray,
    geometry: Geometry,
    reference_shape: Sequence[int],
    reference: Geometry,
    order: int = 1,
    default: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` (any grid) onto a reference grid through world coordinates (SimpleITK).

    Used when a label's grid differs from its image's grid by more than the tolerance.
    Order 0 is nearest neighbour (labels), 1 linear, 3 B-spline.
    """
    import SimpleITK as sitk

    from carve.imaging.io import to_sitk

    interpolators = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}
    moving = to_sitk(array, geometry)
    ref = to_sitk(np.zeros(tuple(reference_shape), dtype=np.uint8), reference)
    out = sitk.Resample(moving, ref, sitk.Transform(), interpolators[order], float(default), moving.GetPixelID())
    return sitk.GetArrayFromImage(out)
