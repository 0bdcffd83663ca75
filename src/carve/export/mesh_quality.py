"""Quality of a label mesh: closure, manifoldness, winding, volume and distance to the label's voxels.

Definitions (one row of ``meshes.tsv`` per mesh, see ``docs/mesh.md``):

* ``watertight``: every edge is shared by exactly two faces (trimesh ``is_watertight``).
* ``edge_manifold``: no edge is shared by more than two faces (an open mesh can be edge-manifold).
* ``nonmanifold_vertices``: vertices whose faces form more than one fan (two sheets touching at a point,
  e.g. voxels touching only at a corner); printable, but some repair tools complain.
* ``winding_consistent``: neighbouring faces traverse their shared edge in opposite directions.
* ``outward_normals``: the signed enclosed volume is positive (with consistent winding: normals point out).
* ``euler_number``: V - E + F; 2 per closed sphere-like shell, 0 per torus-like one.
* ``volume_error_rel``: (mesh volume - voxel volume) / voxel volume, the voxel volume being the label's
  voxel count times the voxel volume.
* ``hausdorff_mm``, ``hd95_mm``, ``mean_distance_mm``: distances between the mesh and the *label
  surface*, the surface made of the voxel faces between label and non-label voxels (the "staircase"
  whose enclosed volume is exactly the voxel volume), in millimetres in the case's own geometry. From
  the mesh to the label surface: the exact distance of every mesh vertex to the nearest point of the label
  surface. From the label surface to the mesh: the exact distance of every corner and every centre of the
  label's voxel faces to the nearest point of the mesh. ``hausdorff_mm`` is the largest of all of them,
  ``hd95_mm`` the larger of the two directed 95th percentiles (as ``carve.evaluation.metrics`` defines HD95),
  ``mean_distance_mm`` the mean of the two directed means. An unsmoothed marching-cubes mesh has its
  vertices on the voxel faces (0 mm) and cuts the corners of the staircase (up to half a voxel diagonal).

Exact point-to-triangle distances (:func:`distances_to_triangles`): candidates from k-d trees of triangle
centroids (scipy), then ``trimesh.triangles.closest_point`` on every candidate that could be the nearest
(trimesh's own nearest-point queries need the rtree package, which carve does not depend on).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from carve.export.mesh_build import signed_volume
from carve.imaging.io import Geometry

# Most candidate (point, triangle) pairs evaluated at once by distances_to_triangles, and how many nearest
# triangle centroids it tries first.
MAX_PAIRS = 2_000_000
NEAREST_CANDIDATES = 12
# Volume error above which a mesh gets a warning (it stays printable).
VOLUME_WARNING_REL = 0.05


def label_surface(mask: np.ndarray, geometry: Geometry) -> tuple[trimesh.Trimesh, np.ndarray]:
    """The voxel faces between foreground and background of ``mask`` as an outward triangle mesh in LPS mm.

    Returns (mesh, face centres): two triangles per voxel face, vertices shared; its signed volume is the
    voxel volume exactly. The centres are those of the square voxel faces, (n_faces, 3) mm.
    """
    fg = np.pad(np.asarray(mask) != 0, 1)
    quads, centres = [], []
    for axis in range(3):
        lo = fg[tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))]
        hi = fg[tuple(slice(1, None) if a == axis else slice(None) for a in range(3))]
        change = lo != hi
        centre = np.argwhere(change).astype(float) - 1.0  # back to unpadded indices
        centre[:, axis] += 0.5
        outward_plus = lo[change]  # foreground below the face: its normal points along +axis
        u, v = (axis + 1) % 3, (axis + 2) % 3
        corners = np.repeat(centre[:, None, :], 4, axis=1)
        for k, (du, dv) in enumerate(((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))):
            corners[:, k, u] += du
            corners[:, k, v] += dv
        corners[~outward_plus] = corners[~outward_plus][:, ::-1]
        quads.append(corners)
        centres.append(centre)
    corners = np.concatenate(quads)
    # half-integer indices: doubled they are exact integers, which makes merging vertices exact
    keys, inverse = np.unique(np.rint(corners.reshape(-1, 3) * 2).astype(np.int64), axis=0, return_inverse=True)
    quad_vertices = inverse.reshape(-1, 4)
    faces = np.concatenate([quad_vertices[:, [0, 1, 2]], quad_vertices[:, [0, 2, 3]]])
    mesh = trimesh.Trimesh(vertices=geometry.index_to_world(keys / 2.0), faces=faces, process=False)
    if np.linalg.det(geometry.affine[:3, :3]) < 0:  # a left-handed grid mirrors index-space winding
        mesh.invert()
    return mesh, geometry.index_to_world(np.concatenate(centres))


def _exact(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(trimesh.triangles.closest_point(triangles, points) - points, axis=1)


def distances_to_triangles(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each of (N, 3) ``points`` to the nearest of (M, 3, 3) ``triangles``.

    First the triangles of the ``NEAREST_CANDIDATES`` nearest centroids; a point is settled when no other
    triangle can be nearer (the next centroid is farther than the best distance plus the largest triangle
    radius). Unsettled points then test every triangle whose centroid lies within the best distance plus the
    triangle's radius, with the triangles grouped by radius so that a few large ones do not widen every search.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    triangles = np.asarray(triangles, dtype=float).reshape(-1, 3, 3)
    if len(triangles) == 0:
        raise ValueError("no triangles to measure distances to")
    if len(points) == 0:
        return np.zeros(0)
    centroids = triangles.mean(axis=1)
    radii = np.linalg.norm(triangles - centroids[:, None, :], axis=2).max(axis=1)
    k = min(NEAREST_CANDIDATES, len(triangles))
    tree = cKDTree(centroids)
    best = np.empty(len(points))
    settled = np.empty(len(points), dtype=bool)
    step = max(1, MAX_PAIRS // k)
    for start in range(0, len(points), step):
        chunk = points[start : start + step]
        reach, nearest = tree.query(chunk, k=k)
        reach, nearest = reach.reshape(len(chunk), k), nearest.reshape(len(chunk), k)
        d = _exact(triangles[nearest.ravel()], np.repeat(chunk, k, axis=0)).reshape(len(chunk), k)
        best[start : start + step] = d.min(axis=1)
        settled[start : start + step] = k == len(triangles) or best[start : start + step] <= reach[:, -1] - radii.max()
    todo = np.flatnonzero(~settled)
    if len(todo) == 0:
        return best
    edges = np.unique(np.quantile(radii, [0.5, 0.9, 1.0]))
    group_of = np.searchsorted(edges, radii)
    for group in np.unique(group_of):
        members = np.flatnonzero(group_of == group)
        group_tree = cKDTree(centroids[members])
        reach = best[todo] + radii[members].max() + 1e-9
        counts = group_tree.query_ball_point(points[todo], reach, return_length=True)
        cumulative = np.cumsum(counts)
        start = 0
        while start < len(todo):
            done = cumulative[start - 1] if start else 0
            stop = min(max(start + 1, int(np.searchsorted(cumulative, done + MAX_PAIRS, side="right"))), len(todo))
            lists = group_tree.query_ball_point(points[todo[start:stop]], reach[start:stop])
            lengths = counts[start:stop]
            if lengths.sum():
                candidates = members[np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(lengths.sum()))]
                owner = np.repeat(np.arange(start, stop), lengths)
                d = _exact(triangles[candidates], points[todo[owner]])
                hit = np.flatnonzero(lengths)  # candidates come grouped by point, in order
                nearest = np.minimum.reduceat(d, (np.cumsum(lengths) - lengths)[hit])
                best[todo[start + hit]] = np.minimum(best[todo[start + hit]], nearest)
            start = stop
    return best


def surface_distances_mm(mesh: trimesh.Trimesh, mask: np.ndarray, geometry: Geometry) -> dict[str, float]:
    """``hausdorff_mm``, ``hd95_mm`` and ``mean_distance_mm`` between an LPS ``mesh`` and ``mask``'s surface."""
    staircase, face_centres = label_surface(mask, geometry)
    to_label = distances_to_triangles(mesh.vertices, staircase.triangles)
    label_points = np.concatenate([np.asarray(staircase.vertices), face_centres])
    to_mesh = distances_to_triangles(label_points, mesh.triangles)
    return {
        "hausdorff_mm": float(max(to_label.max(), to_mesh.max())),
        "hd95_mm": float(max(np.percentile(to_label, 95), np.percentile(to_mesh, 95))),
        "mean_distance_mm": float((to_label.mean() + to_mesh.mean()) / 2.0),
    }


def is_edge_manifold(mesh: trimesh.Trimesh) -> bool:
    """True when no edge is shared by more than two faces."""
    if len(mesh.faces) == 0:
        return True
    edges = np.asarray(mesh.edges_sorted, dtype=np.int64)
    keys = np.sort(edges[:, 0] * len(mesh.vertices) + edges[:, 1])
    return not bool(np.any(keys[2:] == keys[:-2]))  # no key three times in a row


def nonmanifold_vertex_count(mesh: trimesh.Trimesh) -> int:
    """Vertices whose incident faces do not form one fan (connected through edges at that vertex)."""
    faces = np.asarray(mesh.faces)
    if len(faces) == 0:
        return 0
    # one node per face corner; corners of one vertex are joined when their faces share an edge through it
    pairs, edges = np.asarray(mesh.face_adjacency), np.asarray(mesh.face_adjacency_edges)
    links = []
    for end in (0, 1):
        vertex = edges[:, end]
        corner_a = pairs[:, 0] * 3 + np.argmax(faces[pairs[:, 0]] == vertex[:, None], axis=1)
        corner_b = pairs[:, 1] * 3 + np.argmax(faces[pairs[:, 1]] == vertex[:, None], axis=1)
        links.append(np.stack([corner_a, corner_b], axis=1))
    links = np.concatenate(links)
    n = faces.size
    graph = sparse.coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    n_fans, fan = connected_components(graph, directed=False)
    vertex_fans = np.unique(faces.ravel().astype(np.int64) * n_fans + fan)
    fans_per_vertex = np.bincount(vertex_fans // n_fans)
    return int(np.count_nonzero(fans_per_vertex > 1))


def mesh_quality(mesh: trimesh.Trimesh, mask: np.ndarray, geometry: Geometry, *, surface_distance: bool = True) -> dict:
    """The quality columns of one LPS ``mesh`` of ``mask`` (see the module docstring)."""
    voxel_mm3 = float(np.count_nonzero(mask)) * float(np.prod(geometry.spacing_mm))
    volume_mm3 = signed_volume(mesh)
    row = {
        "triangles": int(len(mesh.faces)),
        "watertight": bool(mesh.is_watertight),
        "edge_manifold": is_edge_manifold(mesh),
        "nonmanifold_vertices": nonmanifold_vertex_count(mesh),
        "winding_consistent": bool(mesh.is_winding_consistent),
        "outward_normals": volume_mm3 > 0,
        "euler_number": int(mesh.euler_number),
        "shells": int(mesh.body_count),
        "mesh_volume_ml": volume_mm3 / 1000.0,
        "voxel_volume_ml": voxel_mm3 / 1000.0,
        "volume_error_rel": (volume_mm3 - voxel_mm3) / voxel_mm3 if voxel_mm3 > 0 else float("nan"),
        "area_mm2": float(mesh.area),
        "hausdorff_mm": float("nan"),
        "hd95_mm": float("nan"),
        "mean_distance_mm": float("nan"),
    }
    if surface_distance and len(mesh.faces) and voxel_mm3 > 0:
        row.update(surface_distances_mm(mesh, mask, geometry))
    return row


def printability(quality: Mapping) -> tuple[bool, str]:
    """(printable, warning) of a quality row: printable means closed, edge-manifold, consistently wound and
    outward; the warning names every problem, including those that do not stop a print."""
    problems, notes = [], []
    if not quality["watertight"]:
        problems.append("not watertight (open edges)")
    if not quality["edge_manifold"]:
        problems.append("edges shared by more than two faces")
    if not quality["winding_consistent"]:
        problems.append("inconsistent winding")
    if not quality["outward_normals"]:
        problems.append("normals point inwards (negative volume)")
    if quality["nonmanifold_vertices"]:
        notes.append(f"{quality['nonmanifold_vertices']} non-manifold vertices (sheets touching at a point)")
    error = quality["volume_error_rel"]
    if np.isfinite(error) and abs(error) > VOLUME_WARNING_REL:
        notes.append(f"volume differs from the voxel volume by {100 * error:+.1f} %")
    printable = not problems
    warning = "; ".join(([] if printable else ["not printable: " + ", ".join(problems)]) + notes)
    return printable, warning
