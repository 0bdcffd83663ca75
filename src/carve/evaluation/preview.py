"""A preview per case: three orthogonal slices through the foreground with outlines, and the case's meshes.

The volumes are first turned to the nearest LPS-aligned orientation (``SimpleITK.DICOMOrient``: a
permutation and flips of the array axes, no resampling), so that array axes 0, 1, 2 run towards superior,
posterior and the patient's left and the three panels are axial, coronal and sagittal in the radiological
convention (patient's left on the right of the axial and coronal panels, anterior at the top of the axial
panel, superior at the top of the others). Each panel shows whole voxels (nearest neighbour) with the
physical aspect ratio: a pixel's height over its width is the spacing of its rows over that of its columns.
Outlines follow the voxel edges between a label and anything else: the reference in green, the prediction
in magenta.

The fourth panel renders the meshes (LPS millimetres) with matplotlib's ``Poly3DCollection`` and simple
Lambertian shading, seen from the front (anterior), left of the patient on the right; meshes larger than
:data:`MAX_DISPLAY_FACES` triangles are reduced for display only by vertex clustering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from scipy import ndimage

from carve.evaluation.report import plot_style, save_png
from carve.imaging.io import Geometry, read_channels, read_image, to_sitk

REFERENCE_COLOUR = "#00d000"
PREDICTION_COLOUR = "#ff00ff"
MESH_COLOURS = ("#e6550d", "#3182bd", "#31a354", "#756bb1", "#de2d26", "#636363", "#fdae6b", "#9ecae1")
MAX_DISPLAY_FACES = 20000
MAX_LEGEND_ENTRIES = 10
WINDOW_SAMPLE_VOXELS = 4_000_000
MESH_SUFFIXES = (".stl", ".obj", ".ply", ".glb")
# Towards the light, in LPS: the front (anterior, -P), above (+S), the viewer's left (patient's right, -L).
LIGHT_DIRECTION = np.array([-0.4, -0.8, 0.6]) / np.linalg.norm([-0.4, -0.8, 0.6])


@dataclass(frozen=True)
class Plane:
    """A slice through array axis ``axis`` of an LPS-oriented volume: rows, columns, edge directions."""

    name: str
    axis: int
    rows: int
    cols: int
    origin: str  # imshow origin: "upper" puts row 0 at the top
    edges: tuple[str, str, str, str]  # top, bottom, left, right


PLANES = (
    Plane("axial", 0, 1, 2, "upper", ("A", "P", "R", "L")),
    Plane("coronal", 1, 0, 2, "lower", ("S", "I", "R", "L")),
    Plane("sagittal", 2, 0, 1, "lower", ("S", "I", "A", "P")),
)


@dataclass(frozen=True)
class MeshData:
    name: str
    vertices_mm: np.ndarray  # (n, 3) LPS
    faces: np.ndarray  # (m, 3) vertex indices


def orient_lps(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array turned to the nearest LPS-aligned orientation and its spacing per (new) array axis."""
    image = sitk.DICOMOrient(to_sitk(np.ascontiguousarray(array), geometry), "LPS")
    spacing_xyz = image.GetSpacing()
    return sitk.GetArrayFromImage(image), (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])


def foreground_centre(
    shape: Sequence[int], masks: Sequence[np.ndarray | None], spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[int, int, int]:
    """The centre of the foreground, where the three slices cross.

    The voxel of the largest connected part of the masks' union nearest (in mm) to that part's centroid, so
    that every slice cuts it; the volume centre when the union is empty.
    """
    union = np.zeros(tuple(shape), dtype=bool)
    for mask in masks:
        if mask is not None:
            union |= np.asarray(mask) != 0
    if not union.any():
        return tuple(int(n) // 2 for n in shape)  # type: ignore[return-value]
    parts, n_parts = ndimage.label(union)
    largest = 1 + int(np.argmax(np.bincount(parts.ravel())[1:])) if n_parts > 1 else 1
    voxels = np.argwhere(parts == largest)
    distance = np.linalg.norm((voxels - voxels.mean(axis=0)) * np.asarray(spacing_mm, dtype=float), axis=1)
    return tuple(int(v) for v in voxels[int(np.argmin(distance))])  # type: ignore[return-value]


def boundary_segments(mask: np.ndarray) -> np.ndarray:
    """Voxel edges between foreground and background of a 2D mask, as ``(n, 2, 2)`` segments in (col, row).

    Pixel (r, c) covers [c - 0.5, c + 0.5] x [r - 0.5, r + 0.5], as in ``imshow``; a mask touching the
    border of the slice gets its edge there.
    """
    m = np.pad(np.asarray(mask) != 0, 1)
    vertical = np.argwhere(m[1:-1, 1:] != m[1:-1, :-1])  # (row, padded col j): edge at x = j - 0.5
    horizontal = np.argwhere(m[1:, 1:-1] != m[:-1, 1:-1])  # (padded row i, col): edge at y = i - 0.5
    r, x = vertical[:, 0].astype(float), vertical[:, 1] - 0.5
    v = np.stack([np.stack([x, r - 0.5], axis=1), np.stack([x, r + 0.5], axis=1)], axis=1)
    y, c = horizontal[:, 0] - 0.5, horizontal[:, 1].astype(float)
    h = np.stack([np.stack([c - 0.5, y], axis=1), np.stack([c + 0.5, y], axis=1)], axis=1)
    return np.concatenate([v, h]).reshape(-1, 2, 2)


def label_segments(labels: np.ndarray) -> np.ndarray:
    """Boundary segments of every label value (> 0) of a 2D label slice."""
    parts = [boundary_segments(labels == value) for value in np.unique(labels) if value > 0]
    return np.concatenate(parts) if parts else np.zeros((0, 2, 2))


def display_window(image: np.ndarray) -> tuple[float, float]:
    """Grey-level window: the 0.5th and 99.5th percentiles of the finite voxels (of a regular subsample of
    at most about :data:`WINDOW_SAMPLE_VOXELS` voxels, for large volumes)."""
    image = np.asarray(image)
    step = max(1, int(np.ceil((image.size / WINDOW_SAMPLE_VOXELS) ** (1 / 3))))
    values = image[::step, ::step, ::step].astype(np.float64) if image.ndim == 3 else image.astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def decimate_for_display(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, ...]:
    """Vertex clustering (Rossignac & Borrel) to at most ``max_faces`` triangles; for display only."""
    vertices, faces = np.asarray(vertices, dtype=float), np.asarray(faces, dtype=np.int64)
    if len(faces) <= max_faces:
        return vertices, faces
    edges = vertices[faces[:, [1, 2, 0]]] - vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(edges[:, 0], -edges[:, 2]), axis=1).sum()
    cell = float(np.sqrt(2.0 * area / max_faces))
    while True:
        keys = np.floor((vertices - vertices.min(axis=0)) / cell).astype(np.int64)
        _, cluster = np.unique(keys, axis=0, return_inverse=True)
        cluster = cluster.reshape(-1)
        counts = np.bincount(cluster)
        merged = np.stack([np.bincount(cluster, vertices[:, k]) for k in range(3)], axis=1) / counts[:, None]
        f = cluster[faces]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
        f = np.unique(f, axis=0)
        if len(f) <= max_faces:
            return merged, f
        cell *= 1.25


def shaded_colours(vertices: np.ndarray, faces: np.ndarray, colour: str) -> np.ndarray:
    """Per-face RGB: ambient plus Lambertian light from the viewer's upper left (outward normals)."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    diffuse = np.clip(normals @ LIGHT_DIRECTION, 0.0, 1.0)
    return np.clip((0.3 + 0.7 * diffuse)[:, None] * np.asarray(to_rgb(colour))[None, :], 0.0, 1.0)


def _slice(volume: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """The 2D slice with rows along ``plane.rows`` and columns along ``plane.cols``."""
    return np.take(volume, index, axis=plane.axis)  # remaining axes keep their order: rows < cols


def _draw_slice(ax, image, reference, prediction, spacing_mm, plane, index, window) -> None:
    ax.imshow(
        _slice(image, plane, index).astype(np.float32),
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        origin=plane.origin,
        interpolation="nearest",
    )
    for labels, colour in ((reference, REFERENCE_COLOUR), (prediction, PREDICTION_COLOUR)):
        if labels is not None:
            segments = label_segments(_slice(labels, plane, index))
            ax.add_collection(LineCollection(segments, colors=colour, linewidths=1.2, capstyle="projecting"))
    ax.set_aspect(spacing_mm[plane.rows] / spacing_mm[plane.cols])
    ax.set_title(f"{plane.name}, slice {index + 1}/{image.shape[plane.axis]}")
    ax.set_xticks([])
    ax.set_yticks([])
    top, bottom, left, right = plane.edges
    for text, xy, align in (
        (top, (0.5, 0.98), ("center", "top")),
        (bottom, (0.5, 0.02), ("center", "bottom")),
        (left, (0.02, 0.5), ("left", "center")),
        (right, (0.98, 0.5), ("right", "center")),
    ):
        ax.text(
            *xy,
            text,
            transform=ax.transAxes,
            color="yellow",
            ha=align[0],
            va=align[1],
            fontsize=9,
            path_effects=[withStroke(linewidth=2, foreground="black")],
        )


def _draw_meshes(ax, meshes: Sequence[MeshData], max_faces: int) -> None:
    ax.view_init(elev=15, azim=-75)
    if not meshes:
        ax.set_axis_off()
        ax.text2D(0.5, 0.5, "no mesh", transform=ax.transAxes, ha="center", va="center")
        return
    per_mesh = max(max_faces // len(meshes), 100)
    points = []
    for k, mesh in enumerate(meshes):
        vertices, faces = decimate_for_display(mesh.vertices_mm, mesh.faces, per_mesh)
        colours = shaded_colours(vertices, faces, MESH_COLOURS[k % len(MESH_COLOURS)])
        ax.add_collection3d(Poly3DCollection(vertices[faces], facecolors=colours, edgecolors="none"))
        points.append(vertices)
    allpoints = np.concatenate(points)
    lo, hi = allpoints.min(axis=0), allpoints.max(axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1.0)
    ax.set(xlim=(centre[0] - half, centre[0] + half), ylim=(centre[1] - half, centre[1] + half))
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1), zoom=0.9)
    ax.locator_params(nbins=4)
    ax.set(xlabel="L (mm)", ylabel="P (mm)", zlabel="S (mm)", title="meshes (LPS, seen from the front)")
    ax.tick_params(labelsize=7)
    if len(meshes) <= MAX_LEGEND_ENTRIES:
        colours = [MESH_COLOURS[k % len(MESH_COLOURS)] for k in range(len(meshes))]
        handles = [Patch(color=c, label=m.name) for c, m in zip(colours, meshes, strict=True)]
        ax.legend(handles=handles, loc="upper left", fontsize=8)
    else:
        ax.text2D(0.0, 1.0, f"{len(meshes)} meshes", transform=ax.transAxes, va="top", fontsize=8)


def preview_figure(
    image: np.ndarray,
    spacing_mm: Sequence[float],
    reference: np.ndarray | None,
    prediction: np.ndarray | None,
    meshes: Sequence[MeshData] = (),
    title: str = "",
    max_faces: int = MAX_DISPLAY_FACES,
) -> Figure:
    """The preview of one LPS-oriented volume (see the module docstring); label maps may be None."""
    image = np.asarray(image)
    for name, labels in (("reference", reference), ("prediction", prediction)):
        if labels is not None and np.shape(labels) != image.shape:
            raise ValueError(f"{name} shape {np.shape(labels)} differs from the image shape {image.shape}")
    centre = foreground_centre(image.shape, [reference, prediction], spacing_mm)
    window = display_window(image)
    with plot_style():
        fig = Figure(figsize=(10.0, 9.0), layout="constrained")
        axes = [fig.add_subplot(2, 2, k + 1) for k in range(3)]
        for ax, plane in zip(axes, PLANES, strict=True):
            _draw_slice(ax, image, reference, prediction, spacing_mm, plane, centre[plane.axis], window)
        _draw_meshes(fig.add_subplot(2, 2, 4, projection="3d"), meshes, max_faces)
        handles = [Line2D([], [], color=PREDICTION_COLOUR, label="prediction")]
        if reference is not None:
            handles.insert(0, Line2D([], [], color=REFERENCE_COLOUR, label="reference"))
        spacing = " × ".join(f"{s:.3g}" for s in spacing_mm)
        fig.suptitle(f"{title}\nvoxel {spacing} mm (S-I × A-P × R-L)" if title else f"voxel {spacing} mm")
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


def read_meshes(mesh_dir: Path, label_names: Mapping[int, str]) -> list[MeshData]:
    """The mesh files of a case, in the order of their label values (unknown names last, by name)."""
    import trimesh

    from carve.export.mesh import safe_file_stem

    order = {safe_file_stem(name): value for value, name in label_names.items()}
    candidates = [p for p in Path(mesh_dir).iterdir() if p.suffix.lower() in MESH_SUFFIXES]
    by_stem: dict[str, Path] = {}  # one file per mesh when several formats are written (STL first)
    for p in sorted(candidates, key=lambda p: (MESH_SUFFIXES.index(p.suffix.lower()), p.name)):
        by_stem.setdefault(p.stem, p)
    paths = sorted(by_stem.values(), key=lambda p: (order.get(p.stem, 1 << 30), p.name))
    meshes = []
    for path in paths:
        mesh = trimesh.load(path, force="mesh")
        meshes.append(MeshData(path.stem, np.asarray(mesh.vertices), np.asarray(mesh.faces)))
    return meshes


def write_preview(
    case: str,
    set_name: str,
    image_path: Path,
    label_path: Path | None,
    prediction_path: Path,
    mesh_dir: Path,
    label_names: Mapping[int, str],
    out: Path,
) -> Path:
    """Read a case's converted image, reference (or None), prediction and meshes and write its preview PNG."""
    channels, geometry = read_channels(image_path)
    image = channels[0]  # the first channel is shown
    volumes = {}
    for name, path in (("reference", label_path), ("prediction", prediction_path)):
        if path is None:
            volumes[name] = None
            continue
        labels, label_geometry = read_image(path)
        if labels.shape != image.shape or not label_geometry.is_close(geometry, 1e-3, image.shape):
            raise ValueError(f"case '{case}': {name} {path} is not on the grid of the image {image_path}")
        volumes[name] = orient_lps(labels, label_geometry)[0]
    oriented, spacing_mm = orient_lps(image, geometry)
    fig = preview_figure(
        oriented,
        spacing_mm,
        volumes["reference"],
        volumes["prediction"],
        read_meshes(mesh_dir, label_names),
        title=f"{case} ({set_name})",
    )
    return save_png(fig, out)
