"""Printable surface meshes (STL/OBJ/PLY/GLB) of a segmentation, with a quality table and uncertainty colours.

Per label (or per connected component of each label, on request) :mod:`carve.export.mesh_build` makes a closed,
outward mesh in LPS millimetres, smooths it, decimates it, repairs it and moves it to enclose the label's voxel
volume; :mod:`carve.export.mesh_quality` measures it against the label's voxels; :mod:`carve.export.mesh_colour`
colours a
copy by the case's uncertainty map. Files:

* ``{label}.{format}`` for each configured format (``{label}_{k}.{format}`` per component, k = 1 for the
  largest), vertices in millimetres in patient coordinates (``LPS``, or ``RAS``: x and y negated);
* ``uncertainty/{label}.ply`` and ``.glb``: the same mesh with per-vertex uncertainty colours;
* ``meshes.tsv``: one quality row per mesh (:data:`QUALITY_COLUMNS`); an absent label gets a row with a note
  and no file.

Binary STL files get the neutral 80-byte header ``carve mesh``: no patient or study text is ever written into a
mesh file. GLB files keep patient millimetres too (glTF viewers take the numbers as metres, +Y up).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import trimesh
from scipy import ndimage

from carve.export.mesh_build import (
    COORDINATES,
    SMOOTHING_METHODS,
    decimate,
    marching_cubes_mesh,
    mask_to_mesh,
    match_volume,
    repair,
    smooth,
    to_coordinates,
)
from carve.export.mesh_colour import DEFAULT_COLORMAP, colour_by_volume
from carve.export.mesh_quality import mesh_quality, printability
from carve.imaging.io import Geometry, atomic_write_bytes, atomic_write_text

__all__ = [
    "MESH_FORMATS",
    "QUALITY_COLUMNS",
    "STL_HEADER",
    "MeshOptions",
    "export_label_meshes",
    "export_segmentation_meshes",
    "mask_to_mesh",
    "mesh_bytes",
    "safe_file_stem",
]

log = logging.getLogger(__name__)

STL_HEADER = b"carve mesh".ljust(80, b"\0")
MESH_FORMATS = ("stl", "obj", "ply", "glb")
UNCERTAINTY_FORMATS = ("ply", "glb")
UNCERTAINTY_DIR = "uncertainty"
# Components are face-connected (6-connectivity): voxels touching only along an edge or at a corner share no
# material and print as separate pieces.
COMPONENT_STRUCTURE = ndimage.generate_binary_structure(3, 1)
# Largest normal offset used to match the voxel volume, in units of the smallest voxel spacing.
MAX_VOLUME_OFFSET_VOXELS = 0.5
QUALITY_COLUMNS = (
    "label", "label_value", "component", "file", "uncertainty_file", "voxels", "triangles", "watertight",
    "edge_manifold", "nonmanifold_vertices", "winding_consistent", "outward_normals", "euler_number", "shells",
    "holes_filled", "mesh_volume_ml", "voxel_volume_ml", "volume_error_rel", "area_mm2", "hausdorff_mm",
    "hd95_mm", "mean_distance_mm", "uncertainty_mean", "printable", "warning", "note",
)  # fmt: skip


@dataclass(frozen=True)
class MeshOptions:
    """How meshes are made and written (the ``mesh`` section of the config; see docs/mesh.md)."""

    formats: tuple[str, ...] = ("stl",)
    coordinates: str = "LPS"
    smoothing_method: str = "taubin"
    smoothing_iterations: int = 10
    target_triangles: int | None = None
    target_fraction: float | None = None
    split_components: bool = False
    match_voxel_volume: bool = True
    uncertainty_colour: bool = True
    colormap: str = DEFAULT_COLORMAP
    surface_distance: bool = True

    def __post_init__(self) -> None:
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        object.__setattr__(self, "formats", formats)
        if not formats or any(f not in MESH_FORMATS for f in formats) or len(set(formats)) != len(formats):
            raise ValueError(f"mesh formats must be distinct values of {MESH_FORMATS}, got {list(formats)}")
        if self.coordinates not in COORDINATES:
            raise ValueError(f"coordinates must be one of {COORDINATES}, got {self.coordinates!r}")
        if self.smoothing_method not in SMOOTHING_METHODS:
            raise ValueError(f"smoothing_method must be one of {SMOOTHING_METHODS}, got {self.smoothing_method!r}")
        if self.smoothing_iterations < 0:
            raise ValueError(f"smoothing_iterations must be >= 0, got {self.smoothing_iterations}")
        if self.target_triangles is not None and self.target_triangles < 4:
            raise ValueError(f"target_triangles must be at least 4, got {self.target_triangles}")
        if self.target_fraction is not None and not 0 < self.target_fraction <= 1:
            raise ValueError(f"target_fraction must be in (0, 1], got {self.target_fraction}")

    @classmethod
    def from_config(cls, config: Mapping) -> MeshOptions:
        """Options from the config's ``mesh`` section (``format`` may be one name or a list)."""
        known = {"format", *cls.__dataclass_fields__} - {"formats"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown mesh options: {sorted(unknown)}")
        values = {k: v for k, v in config.items() if k != "format"}
        if "format" in config:
            values["formats"] = config["format"]
        return cls(**values)


def mesh_bytes(mesh: trimesh.Trimesh, file_format: str = "stl") -> bytes:
    """Serialise ``mesh``; binary STL gets the neutral header :data:`STL_HEADER`."""
    if file_format not in MESH_FORMATS:
        raise ValueError(f"file_format must be one of {MESH_FORMATS}, got {file_format!r}")
    data = mesh.export(file_type=file_format)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if file_format == "stl":
        data = STL_HEADER + data[80:]
    return data


def safe_file_stem(name: str) -> str:
    """A file name stem from a label name: characters other than letters, digits, '.', '_', '-' become '_'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip()).strip("._")
    if not stem:
        raise ValueError(f"label name {name!r} gives no usable file name")
    return stem


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Face-connected components of ``mask``, largest first (ties: first in array order)."""
    labelled, n = ndimage.label(mask, structure=COMPONENT_STRUCTURE)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    order = sorted(range(n), key=lambda k: (-sizes[k], k))
    return [labelled == k + 1 for k in order]


def _empty_row(name: str, value: int, note: str) -> dict:
    row = dict.fromkeys(QUALITY_COLUMNS, float("nan"))
    row.update(label=str(name), label_value=int(value), component=0, file="", uncertainty_file="", voxels=0,
               triangles=0, watertight=False, edge_manifold=False, nonmanifold_vertices=0, winding_consistent=False,
               outward_normals=False, euler_number=0, shells=0, holes_filled=0, mesh_volume_ml=0.0,
               voxel_volume_ml=0.0, area_mm2=0.0, printable=False, warning="", note=note)  # fmt: skip
    return row


def _build(mask: np.ndarray, geometry: Geometry, options: MeshOptions) -> tuple[trimesh.Trimesh, int]:
    """Marching cubes, smoothing, decimation, repair and (optionally) the voxel volume; holes filled."""
    mesh = marching_cubes_mesh(mask, geometry)
    mesh = smooth(mesh, options.smoothing_iterations, options.smoothing_method)
    mesh = decimate(mesh, options.target_triangles, options.target_fraction)
    mesh, holes_filled = repair(mesh)
    if options.match_voxel_volume:
        voxel_mm3 = float(np.count_nonzero(mask)) * float(np.prod(geometry.spacing_mm))
        mesh, _ = match_volume(mesh, voxel_mm3, MAX_VOLUME_OFFSET_VOXELS * min(geometry.spacing_mm))
    return mesh, holes_filled


def _mesh_one(
    mask: np.ndarray,
    geometry: Geometry,
    stem: str,
    out_dir: Path,
    options: MeshOptions,
    uncertainty: tuple[np.ndarray, Geometry] | None,
) -> dict:
    """Mesh one mask, write its files and return its quality columns."""
    mesh, holes_filled = _build(mask, geometry, options)
    row = mesh_quality(mesh, mask, geometry, surface_distance=options.surface_distance)
    row.update(voxels=int(np.count_nonzero(mask)), holes_filled=holes_filled, uncertainty_mean=float("nan"))
    row["printable"], row["warning"] = printability(row)
    out_mesh = to_coordinates(mesh, options.coordinates)
    files = []
    for file_format in options.formats:
        atomic_write_bytes(out_dir / f"{stem}.{file_format}", mesh_bytes(out_mesh, file_format))
        files.append(f"{stem}.{file_format}")
    row["file"] = ";".join(files)
    row["uncertainty_file"] = ""
    if uncertainty is not None and options.uncertainty_colour:
        coloured, values = colour_by_volume(mesh, *uncertainty, colormap=options.colormap)
        coloured = to_coordinates(coloured, options.coordinates)
        names = []
        for file_format in UNCERTAINTY_FORMATS:
            name = f"{UNCERTAINTY_DIR}/{stem}.{file_format}"
            atomic_write_bytes(out_dir / name, mesh_bytes(coloured, file_format))
            names.append(name)
        row["uncertainty_file"] = ";".join(names)
        row["uncertainty_mean"] = float(values.mean())
    if row["warning"]:
        log.warning("%s: %s", stem, row["warning"])
    return row


def _remove_stale(out_dir: Path, stem: str) -> None:
    for file_format in MESH_FORMATS:
        (out_dir / f"{stem}.{file_format}").unlink(missing_ok=True)
    for file_format in UNCERTAINTY_FORMATS:
        (out_dir / UNCERTAINTY_DIR / f"{stem}.{file_format}").unlink(missing_ok=True)


def export_label_meshes(
    labels: np.ndarray,
    geometry: Geometry,
    label_names: Mapping[int, str],
    out_dir: str | Path,
    *,
    options: MeshOptions | None = None,
    uncertainty: tuple[np.ndarray, Geometry] | None = None,
) -> pd.DataFrame:
    """Write the meshes of every label of ``label_names`` ({value: name}) and ``out_dir/meshes.tsv``.

    ``uncertainty`` is (volume, its geometry); with it (and ``options.uncertainty_colour``) each mesh also gets
    coloured copies under ``out_dir/uncertainty/``. A label absent from ``labels`` writes no file (older files
    of its name are removed) and gets a row with a note. Returns the quality table (:data:`QUALITY_COLUMNS`).
    Files are written atomically.
    """
    options = options or MeshOptions()
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"export_label_meshes expects a 3D label volume, got shape {arr.shape}")
    stems = {value: safe_file_stem(name) for value, name in label_names.items()}
    if len(set(stems.values())) != len(stems):
        raise ValueError(f"label names give duplicate file names: {sorted(stems.values())}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for value, name in sorted(label_names.items()):
        stem = stems[value]
        _remove_stale(out_dir, stem)
        mask = arr == value
        if not mask.any():
            rows.append(_empty_row(name, value, f"label {value} ({name}) is absent from the label volume: no mesh"))
            continue
        parts = components(mask) if options.split_components else [mask]
        for k, part in enumerate(parts, start=1):
            component = k if options.split_components else 0
            part_stem = f"{stem}_{k}" if options.split_components else stem
            row = {"label": str(name), "label_value": int(value), "component": component, "note": ""}
            row.update(_mesh_one(part, geometry, part_stem, out_dir, options, uncertainty))
            if options.split_components and k == 1:
                row["note"] = f"{len(parts)} face-connected components"
            rows.append(row)
            log.info("%s: %d triangles, volume error %+.2f %%, Hausdorff %.2f mm", part_stem, row["triangles"],
                     100 * row["volume_error_rel"], row["hausdorff_mm"])  # fmt: skip
    table = pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))
    atomic_write_text(out_dir / "meshes.tsv", table.to_csv(sep="\t", index=False))
    return table


def export_segmentation_meshes(
    labels_path: str | Path,
    label_names: Mapping[int, str],
    out_dir: str | Path,
    *,
    options: MeshOptions | Mapping | None = None,
    uncertainty_path: str | Path | None = None,
) -> pd.DataFrame:
    """Mesh every label of a segmentation file (in its own geometry) into ``out_dir``.

    ``options`` may be the config's ``mesh`` section; ``uncertainty_path`` an uncertainty map (any grid).
    """
    from carve.imaging.io import read_image

    if not isinstance(options, MeshOptions):
        options = MeshOptions.from_config(options or {})
    labels, geometry = read_image(labels_path)
    uncertainty = None
    if uncertainty_path is not None and options.uncertainty_colour:
        uncertainty = read_image(uncertainty_path)
    return export_label_meshes(labels, geometry, label_names, out_dir, options=options, uncertainty=uncertainty)
