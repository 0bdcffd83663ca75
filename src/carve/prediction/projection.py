"""Radial re-projections of a volume: the SPU-Net transform family as extra ensemble members.

A *projection* resamples the image through a smooth, invertible warp of the volume onto itself; the network
predicts the warped image, and each member's probabilities are mapped back through the inverse warp before
they join the ensemble statistics (:func:`carve.prediction.inference.sliding_window_probabilities`). A network is not
equivariant to such warps, so the projected members see the anatomy at other local scales and disagree where
the prediction is fragile: a further source of members next to folds and mirroring.

Geometry. For a volume of shape ``(n_z, n_y, n_x)`` the normalised position of voxel index ``i`` along axis
``a`` is ``u_a = (i_a - c_a) / h_a`` with the centre ``c_a = (n_a - 1) / 2`` and the half extent
``h_a = n_a / 2`` (to the outer voxel edges): the volume is the box ``[-1, 1]^3``, whatever its shape or
spacing. With ``r = |u|`` (Euclidean) the warp of strength ``gamma`` moves points along rays from the centre
inside the unit ball (``R = 1``, the ellipsoid inscribed in the volume) and leaves the rest alone::

    r -> r' = R (r / R) ** gamma   for r <= R,        r' = r   outside.

It fixes the centre and the ball's surface, so it maps the volume onto itself (no voxel is sampled from
outside), and its inverse is the warp of strength ``1 / gamma``. The projected image is the pull-back
``J(u) = I(w(u))``: ``gamma > 1`` enlarges the centre of the volume, ``gamma < 1`` shrinks it and enlarges the
ball's rim. Images are resampled with cubic B-splines (prefiltered in float32), probabilities with linear
interpolation, which keeps them in ``[0, 1]`` and summing to 1. Coordinates are computed in slabs of about
:data:`SLAB_VOXELS` voxels, so the extra memory of a warp is one float32 volume (the output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SLAB_VOXELS = 1 << 21  # voxels of source coordinates computed at once (3 float32 each: 24 MiB)


def projection_gammas(count: int, base: float = 1.25) -> tuple[float, ...]:
    """Strengths of ``count`` projections: ``base**-1, base, base**-2, base**2, ...`` (alternately shrinking and
    enlarging the centre, growing in strength); ``base > 1``."""
    if count < 0:
        raise ValueError(f"the number of projections must be >= 0, got {count}")
    if not base > 1.0:
        raise ValueError(f"the projection strength base must be > 1, got {base}")
    return tuple(float(base ** ((k // 2 + 1) * (-1 if k % 2 == 0 else 1))) for k in range(count))


def _source_coordinates(shape: Sequence[int], gamma: float, z0: int, z1: int) -> np.ndarray:
    """Array indices ``(3, z1 - z0, n_y, n_x)`` float32 that the output slab ``z0:z1`` samples from."""
    n = np.asarray(shape, dtype=np.float64)
    centre, half = (n - 1.0) / 2.0, n / 2.0
    axes = [
        ((np.arange(z0, z1) - centre[0]) / half[0]).reshape(-1, 1, 1),
        ((np.arange(shape[1]) - centre[1]) / half[1]).reshape(1, -1, 1),
        ((np.arange(shape[2]) - centre[2]) / half[2]).reshape(1, 1, -1),
    ]
    r = np.sqrt(axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2)
    inside = (r > 0) & (r <= 1.0)
    scale = np.ones_like(r)
    scale[inside] = r[inside] ** (gamma - 1.0)
    coords = np.empty((3, z1 - z0, shape[1], shape[2]), dtype=np.float32)
    for a in range(3):
        coords[a] = centre[a] + half[a] * axes[a] * scale
    return coords


def warp_volume(volume: np.ndarray, gamma: float, order: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """The pull-back of a 3D ``volume`` through the radial warp of strength ``gamma`` (see module docstring).

    ``order`` 1 interpolates linearly, 3 with cubic B-splines (coefficients in float32). Returns float32, in
    ``out`` when given (which must not be ``volume``). ``gamma == 1`` returns an exact copy.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"warp_volume takes a (z, y, x) volume, got shape {volume.shape}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if order not in (1, 3):
        raise ValueError(f"order must be 1 (linear) or 3 (cubic), got {order}")
    if out is None:
        out = np.empty(volume.shape, dtype=np.float32)
    elif out.shape != volume.shape or out.dtype != np.float32 or np.may_share_memory(out, volume):
        raise ValueError("out must be a separate float32 array of the volume's shape")
    source = np.asarray(volume, dtype=np.float32)
    if gamma == 1.0:
        out[...] = source
        return out
    if order == 3:
        source = ndimage.spline_filter(source, order=3, output=np.float32, mode="mirror")
    mode = "mirror" if order == 3 else "nearest"
    slab = max(1, SLAB_VOXELS // max(1, volume.shape[1] * volume.shape[2]))
    for z0 in range(0, volume.shape[0], slab):
        z1 = min(volume.shape[0], z0 + slab)
        coords = _source_coordinates(volume.shape, gamma, z0, z1)
        ndimage.map_coordinates(source, coords, output=out[z0:z1], order=order, mode=mode, prefilter=False)
    return out


@dataclass(frozen=True)
class RadialWarp:
    """One projection of the family: :meth:`project` an image, :meth:`unproject_` its members' probabilities."""

    gamma: float

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")

    def project(self, image: np.ndarray) -> np.ndarray:
        """Warp every channel of a ``(C, z, y, x)`` image (cubic); a new float32 array."""
        image = np.asarray(image)
        if image.ndim != 4:
            raise ValueError(f"project takes a (C, z, y, x) image, got shape {image.shape}")
        out = np.empty(image.shape, dtype=np.float32)
        for c in range(image.shape[0]):
            warp_volume(image[c], self.gamma, order=3, out=out[c])
        return out

    def unproject_(self, probabilities: np.ndarray) -> None:
        """Map ``(n_classes, z, y, x)`` probabilities of the projected image back, in place (linear)."""
        if probabilities.ndim != 4:
            raise ValueError(f"unproject_ takes (n_classes, z, y, x), got shape {probabilities.shape}")
        for c in range(probabilities.shape[0]):
            probabilities[c] = warp_volume(probabilities[c], 1.0 / self.gamma, order=1)


def radial_projections(count: int, base: float = 1.25) -> tuple[RadialWarp, ...]:
    """The first ``count`` projections of the family (strengths from :func:`projection_gammas`)."""
    return tuple(RadialWarp(g) for g in projection_gammas(count, base))
