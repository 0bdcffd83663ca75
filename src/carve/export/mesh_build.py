"""Surface meshes from label masks: marching cubes, orientation, smoothing, decimation, repair.

A mask is meshed with scikit-image's marching cubes at level 0.5 on the mask padded by zeros, so every
surface is closed (a label cut by the field of view gets a flat cap). Vertices, found in array index
order, are mapped through :meth:`carve.imaging.io.Geometry.index_to_world` to LPS millimetres, which handles
anisotropic spacing, oblique directions and flipped axes alike. Faces are oriented so that normals point
out of the object: the signed enclosed volume must be positive, and the faces are flipped when it is not
(marching cubes' own winding, seen through a direction matrix of either determinant sign, can be inside
out). Vertices are shared (merged), so the mesh is watertight and consistently wound.

Smoothing (both from trimesh; VTK's windowed-sinc filter is not used, carve does not depend on VTK):

* ``taubin``: Taubin's shrink/inflate low-pass filter (``trimesh.smoothing.filter_taubin``); trimesh counts
  each shrink or inflate pass as one iteration, so an even number is balanced. Removes the voxel
  staircase with little volume change, but leaves a few per cent of surface area excess.
* ``volume_laplacian``: the mutable diffusion Laplacian of Barroqueiro et al. (2021, smoothing for
  additive manufacturing) with its volume constraint (``trimesh.smoothing.filter_mut_dif_laplacian``):
  after every pass the surface is moved along its normals to restore the volume it had before smoothing.
  With 50-100 iterations it removes the staircase almost completely (sphere area within 0.5 %).

Decimation uses trimesh's quadric edge collapse (``simplify_quadric_decimation``, fast_simplification).
Every mesh then goes through :func:`repair`: merged vertices, degenerate and duplicate faces removed, small
holes (three or four edges) filled, winding made consistent and outward. :func:`match_volume` finally moves
the surface along its normals (by a fraction of a voxel at most) until it encloses the label's voxel volume:
marching cubes cuts the corners of the voxel staircase and loses volume (a few per cent on thin structures).
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from carve.imaging.io import Geometry

COORDINATES = ("LPS", "RAS")
SMOOTHING_METHODS = ("taubin", "volume_laplacian", "none")
# Taubin parameters: shrink by lamb, inflate by nu, with 0 < 1/lamb - 1/nu < 0.1 (Taubin 1995).
TAUBIN_LAMBDA = 0.5
TAUBIN_NU = 0.52
# Diffusion speed of the mutable diffusion Laplacian (trimesh's default).
DIFFUSION_LAMBDA = 0.5
# LPS <-> RAS: negate x and y (a rotation by 180 degrees about z, so winding and volume sign are kept).
RAS_FLIP = np.array([-1.0, -1.0, 1.0])


def _volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (np.asarray(vertices)[np.asarray(faces)[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def signed_volume(mesh: trimesh.Trimesh) -> float:
    """Signed enclosed volume (divergence theorem; trimesh's ``volume`` also computes the inertia, slower)."""
    return _volume(mesh.vertices, mesh.faces) if len(mesh.faces) else 0.0


def marching_cubes_mesh(mask: np.ndarray, geometry: Geometry, *, step_size: int = 1) -> trimesh.Trimesh:
    """Closed, outward-oriented triangle mesh of the foreground of ``mask`` in LPS millimetres (no smoothing).

    ``step_size`` > 1 samples every step-th voxel (coarser, faster mesh). Raises ValueError for an empty or
    non-3D mask.
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"mask_to_mesh expects a 3D mask, got shape {arr.shape}")
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
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
        mesh = trimesh.Trimesh(vertices=geometry.index_to_world(verts + offset), faces=faces, process=True)
        if mesh.is_watertight:
            break
        tried.append(mesh)
    else:
        mesh = tried[0]  # neither closes: keep Lewiner's; the quality table flags it
    if signed_volume(mesh) < 0:
        mesh.invert()
    return mesh


def smooth(mesh: trimesh.Trimesh, iterations: int, method: str = "taubin") -> trimesh.Trimesh:
    """Smoothed copy of ``mesh`` (see the module docstring for the methods); 0 iterations copies."""
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"smoothing method must be one of {SMOOTHING_METHODS}, got {method!r}")
    if iterations < 0:
        raise ValueError(f"smoothing iterations must be >= 0, got {iterations}")
    out = mesh.copy()
    if iterations == 0 or method == "none" or len(out.faces) == 0:
        return out
    if method == "taubin":
        trimesh.smoothing.filter_taubin(out, lamb=TAUBIN_LAMBDA, nu=TAUBIN_NU, iterations=iterations)
    else:
        trimesh.smoothing.filter_mut_dif_laplacian(
            out, lamb=DIFFUSION_LAMBDA, iterations=iterations, volume_constraint=True
        )
    if not np.isfinite(out.vertices).all():
        raise ValueError(f"{method} smoothing gave non-finite vertices")
    return out


def decimation_target(n_faces: int, target_triangles: int | None, target_fraction: float | None) -> int | None:
    """Faces to decimate to, or None when no decimation is asked for or the mesh is already small enough.

    ``target_triangles`` is an absolute count, ``target_fraction`` a fraction of ``n_faces``; with both, the
    larger count (the gentler reduction) wins. Fewer than 4 faces is never asked for.
    """
    targets = []
    if target_triangles is not None:
        targets.append(int(target_triangles))
    if target_fraction is not None:
        targets.append(int(round(float(target_fraction) * n_faces)))
    if not targets:
        return None
    target = max(max(targets), 4)
    return target if target < n_faces else None


def decimate(
    mesh: trimesh.Trimesh, target_triangles: int | None = None, target_fraction: float | None = None
) -> trimesh.Trimesh:
    """Quadric edge-collapse decimation to the target face count (see :func:`decimation_target`)."""
    target = decimation_target(len(mesh.faces), target_triangles, target_fraction)
    if target is None:
        return mesh.copy()
    out = mesh.simplify_quadric_decimation(face_count=target)
    out = trimesh.Trimesh(vertices=out.vertices, faces=out.faces, process=True)
    return out


def repair(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, int]:
    """Clean copy of ``mesh`` and the number of faces added to close small holes.

    Merges duplicate vertices, drops degenerate and duplicate faces and unused vertices, fills holes of
    three or four edges (``trimesh.repair.fill_holes``), makes the winding consistent and the normals point
    outwards (positive enclosed volume).
    """
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=True)
    out.update_faces(out.nondegenerate_faces())
    out.update_faces(out.unique_faces())
    out.remove_unreferenced_vertices()
    before = len(out.faces)
    if not out.is_watertight:
        trimesh.repair.fill_holes(out)
    added = len(out.faces) - before
    if not out.is_winding_consistent:
        trimesh.repair.fix_winding(out)
    if out.is_watertight and signed_volume(out) < 0:
        out.invert()
    return out, int(added)


def match_volume(
    mesh: trimesh.Trimesh, target_mm3: float, max_offset_mm: float, iterations: int = 3
) -> tuple[trimesh.Trimesh, float]:
    """Copy of a closed ``mesh`` moved along its vertex normals until it encloses ``target_mm3``; and the offset.

    Each step moves every vertex by (target - volume) / area along its (area-weighted) normal, the normals and
    area of the input mesh; the total offset is clipped to +-``max_offset_mm`` so that thin parts cannot fold
    over. An open mesh is returned unchanged (its volume is not defined).
    """
    out = mesh.copy()
    if not out.is_watertight or out.area <= 0:
        return out, 0.0
    area = float(out.area)
    normals = np.asarray(out.vertex_normals)
    base = np.asarray(out.vertices)
    faces = np.asarray(out.faces)
    vertices = base
    total = 0.0
    for _ in range(iterations):
        step = (float(target_mm3) - _volume(vertices, faces)) / area
        step = float(np.clip(total + step, -max_offset_mm, max_offset_mm)) - total
        if abs(step) < 1e-6:
            break
        total += step
        vertices = base + total * normals
    out.vertices = vertices
    return out, total


def to_coordinates(mesh: trimesh.Trimesh, coordinates: str) -> trimesh.Trimesh:
    """Copy of an LPS ``mesh`` in ``coordinates`` (``LPS`` or ``RAS``: x and y negated), visuals kept."""
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")
    out = mesh.copy()
    if coordinates == "RAS":
        out.vertices = np.asarray(out.vertices) * RAS_FLIP
    return out


def mask_to_mesh(
    mask: np.ndarray,
    geometry: Geometry,
    *,
    smoothing_iterations: int = 0,
    smoothing_method: str = "taubin",
    step_size: int = 1,
    coordinates: str = "LPS",
) -> trimesh.Trimesh:
    """Closed, outward-oriented triangle mesh of the foreground of ``mask`` in world millimetres.

    Marching cubes (:func:`marching_cubes_mesh`), then ``smoothing_iterations`` of ``smoothing_method``
    (:func:`smooth`), then ``coordinates`` (``LPS`` or ``RAS``). Raises ValueError for an empty or non-3D
    mask or unknown options.
    """
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")
    if smoothing_iterations < 0:
        raise ValueError(f"smoothing_iterations must be >= 0, got {smoothing_iterations}")
    mesh = marching_cubes_mesh(mask, geometry, step_size=step_size)
    mesh = smooth(mesh, smoothing_iterations, smoothing_method)
    return to_coordinates(mesh, coordinates)
