"""Colour a mesh by a volume sampled at its vertices: uncertainty on the surface.

The volume (the case's normalised predictive entropy, in [0, 1], on its own grid) is sampled by trilinear
interpolation at each vertex: LPS millimetres go to continuous array indices through the volume's own
:class:`carve.imaging.io.Geometry` (so the volume's grid need not be the label's), then
``scipy.ndimage.map_coordinates`` with ``order=1``; points beyond the grid take the nearest border value.
Values go through a matplotlib colour map over a fixed range (``[0, 1]`` by default, so colours mean the
same in every case) to 8-bit RGBA vertex colours; the raw values are kept as the per-vertex property
``uncertainty`` (a float property in PLY, the attribute ``_UNCERTAINTY`` in glTF).
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage

from carve.imaging.io import Geometry

DEFAULT_COLORMAP = "viridis"


def sample_trilinear(volume: np.ndarray, geometry: Geometry, points_mm: np.ndarray) -> np.ndarray:
    """Values of ``volume`` (placed by ``geometry``) at (N, 3) LPS points, trilinearly interpolated."""
    arr = np.asarray(volume, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"sample_trilinear expects a 3D volume, got shape {arr.shape}")
    indices = geometry.world_to_index(points_mm)
    return ndimage.map_coordinates(arr, indices.T, order=1, mode="nearest")


def colormap_rgba(values: np.ndarray, colormap: str = DEFAULT_COLORMAP, value_range=(0.0, 1.0)) -> np.ndarray:
    """(N, 4) uint8 colours of ``values`` through the matplotlib colour map ``colormap`` over ``value_range``."""
    import matplotlib

    if colormap not in matplotlib.colormaps:
        raise ValueError(f"unknown colour map {colormap!r}: use a matplotlib colour map name such as 'viridis'")
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"colour range must be increasing, got {value_range}")
    scaled = np.clip((np.asarray(values, dtype=float) - low) / (high - low), 0.0, 1.0)
    return np.rint(matplotlib.colormaps[colormap](scaled) * 255).astype(np.uint8)


def colour_by_volume(
    mesh: trimesh.Trimesh,
    volume: np.ndarray,
    geometry: Geometry,
    *,
    colormap: str = DEFAULT_COLORMAP,
    value_range=(0.0, 1.0),
    attribute: str = "uncertainty",
) -> tuple[trimesh.Trimesh, np.ndarray]:
    """Copy of an LPS ``mesh`` with vertex colours from ``volume`` sampled at its vertices, and the values."""
    values = sample_trilinear(volume, geometry, mesh.vertices)
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=colormap_rgba(values, colormap, value_range))
    out.vertex_attributes[attribute] = values.astype(np.float32)
    return out, values
