"""Printable surface meshes (STL/OBJ/PLY) from label volumes.

A mask is meshed with scikit-image's marching cubes at level 0.5 on the mask padded by zeros, so every
surface is closed (a label cut by the field of view gets a flat cap). Vertices, found in array index
order, are mapped through :meth:`carve.io.Geometry.index_to_world` to LPS millimetres, which handles
anisotropic spacing, oblique directions and flipped axes alike; ``coordinates="RAS"`` then negates x and
y (the convention of 3D Slicer and most NIfTI viewers). Faces are oriented so that normals point out of
the object: the signed enclosed volume must be positive, and the faces are flipped when it is not
(marching cubes' own winding, seen through a direction matrix of either determinant sign, can be
inside out). Vertices are shared (merged), so the mesh
is watertight and consistently wound; optional Taubin smoothing (``trimesh.smoothing.filter_taubin``)
removes the staircase with little volume change (trimesh counts each shrink or inflate pass as one
iteration, so an even number is balanced).

Binary STL files get the neutral 80-byte header ``carve mesh``: no patient or study text is ever
written into a mesh file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from carve.io import Geometry, atomic_write_bytes, atomic_write_text

STL_HEADER = b"carve mesh".ljust(80, b"\0")
MESH_FORMATS = ("stl", "obj", "ply")
COORDINATES = ("LPS", "RAS")
# Taubin parameters: shrink by lamb, inflate by nu, with 0 < 1/lamb - 1/nu < 0.1 (Taubin 1995).
TAUBIN_LAMBDA = 0.5
TAUBIN_NU = 0.52
QUALITY_COLUMNS = (
    "label", "label_value", "file", "triangles", "watertight", "winding_consistent", "euler_number",
    "mesh_volume_ml", "voxel_volume_ml", "volume_error_rel", "note",
)  # fmt: skip


def mask_to_mesh(
    mask: np.ndarray,
    geometry: Geometry,
    *,
    smoothing_iterations: int = 0,
    step_size: int = 1,
    coordinates: str = "LPS",
) -> trimesh.Trimesh:
    """Closed, outward-oriented triangle mesh of the foreground of ``mask`` in world millimetres.

    ``step_size`` > 1 samples every step-th voxel (coarser, faster mesh). ``smoothing_iterations`` > 0
    applies that many Taubin iterations. Raises ValueError for an empty or non-3D mask.
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"mask_to_mesh expects a 3D mask, got shape {arr.shape}")
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")
    if step_size < 1 or smoothing_iterations < 0:
        raise ValueError(f"step_size must be >= 1 and smoothing_iterations >= 0, got {step_size}, "
                         f"{smoothing_iterations}")  # fmt: skip
    fg = arr if arr.dtype == np.bool_ else arr != 0
    boxes = ndimage.find_objects(fg.astype(np.uint8))
    if not boxes or boxes[0] is None:
        raise ValueError("mask is empty: there is no surface to mesh")
    box = boxes[0]
    # pad by step_size so the sampled grid always has a zero layer beyond the object on every side
    pad = step_size
    padded = np.pad(fg[box], pad).astype(np.float32)
    offset = np.array([s.start for s in box], dtype=float) - pad
    # Lewiner's tables resolve ambiguous cells but scikit-image's implementation can leave a few edges shared
    # by four faces where voxels touch along an edge; Lorensen's original tables then often give a closed surface.
    tried = []
    for method in ("lewiner", "lorensen"):
        verts, faces, _, _ = marching_cubes(
            padded, level=0.5, step_size=step_size, allow_degenerate=False, method=method
        )
        world = geometry.index_to_world(verts + offset)
        if coordinates == "RAS":
            world[:, :2] *= -1.0
        mesh = trimesh.Trimesh(vertices=world, faces=faces, process=True)
        if mesh.is_watertight:
            break
        tried.append(mesh)
    else:
        mesh = tried[0]  # neither closes: keep Lewiner's; the quality table flags it
    if mesh.volume < 0:
        mesh.invert()
    if smoothing_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=TAUBIN_LAMBDA, nu=TAUBIN_NU, iterations=smoothing_iterations)
    return mesh


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


def _quality_row(mesh: trimesh.Trimesh, voxel_ml: float) -> dict:
    mesh_ml = float(mesh.volume) / 1000.0
    return {
        "triangles": int(len(mesh.faces)),
        "watertight": bool(mesh.is_watertight),
        "winding_consistent": bool(mesh.is_winding_consistent),
        "euler_number": int(mesh.euler_number),
        "mesh_volume_ml": mesh_ml,
        "volume_error_rel": (mesh_ml - voxel_ml) / voxel_ml,
    }


def export_label_meshes(
    labels: np.ndarray,
    geometry: Geometry,
    label_names: Mapping[int, str],
    out_dir: str | Path,
    *,
    file_format: str = "stl",
    smoothing_iterations: int = 0,
    coordinates: str = "LPS",
) -> pd.DataFrame:
    """Write one mesh file ``{label_name}.{file_format}`` per label of ``label_names`` ({value: name}).

    Only the labels named in ``label_names`` are meshed. A label absent from ``labels`` writes no file
    (an older file of that name in ``out_dir`` is removed) and gets a row with a note. Returns the
    quality table (columns :data:`QUALITY_COLUMNS`, one row per label), also written as
    ``out_dir/meshes.tsv``. Files are written atomically.
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"export_label_meshes expects a 3D label volume, got shape {arr.shape}")
    if file_format not in MESH_FORMATS:
        raise ValueError(f"file_format must be one of {MESH_FORMATS}, got {file_format!r}")
    stems = {value: safe_file_stem(name) for value, name in label_names.items()}
    if len(set(stems.values())) != len(stems):
        raise ValueError(f"label names give duplicate file names: {sorted(stems.values())}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    rows = []
    for value, name in sorted(label_names.items()):
        path = out_dir / f"{stems[value]}.{file_format}"
        mask = arr == value
        n_voxels = int(np.count_nonzero(mask))
        row = {"label": str(name), "label_value": int(value), "file": "", "triangles": 0, "watertight": False,
               "winding_consistent": False, "euler_number": 0, "mesh_volume_ml": 0.0,
               "voxel_volume_ml": n_voxels * voxel_mm3 / 1000.0, "volume_error_rel": float("nan"),
               "note": ""}  # fmt: skip
        if n_voxels == 0:
            path.unlink(missing_ok=True)
            row["note"] = f"label {value} ({name}) is absent from the label volume: no mesh written"
            rows.append(row)
            continue
        mesh = mask_to_mesh(mask, geometry, smoothing_iterations=smoothing_iterations, coordinates=coordinates)
        atomic_write_bytes(path, mesh_bytes(mesh, file_format))
        row.update(_quality_row(mesh, row["voxel_volume_ml"]), file=path.name)
        if not row["watertight"]:
            row["note"] = "mesh is not watertight: check before printing"
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))
    atomic_write_text(out_dir / "meshes.tsv", table.to_csv(sep="\t", index=False))
    return table


def export_segmentation_meshes(
    labels_path: str | Path,
    label_names: Mapping[int, str],
    out_dir: str | Path,
    *,
    file_format: str = "stl",
    smoothing_iterations: int = 0,
    coordinates: str = "LPS",
) -> pd.DataFrame:
    """Mesh every label of a segmentation file (in its own geometry) into ``out_dir``."""
    from carve.io import read_image

    labels, geometry = read_image(labels_path)
    return export_label_meshes(
        labels,
        geometry,
        label_names,
        out_dir,
        file_format=file_format,
        smoothing_iterations=smoothing_iterations,
        coordinates=coordinates,
    )
