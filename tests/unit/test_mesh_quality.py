"""carve.export.mesh_quality: the label surface, exact distances, manifoldness, printability;
carve.export.mesh_build.repair."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from carve.export.mesh_build import marching_cubes_mesh, match_volume, repair
from carve.export.mesh_quality import (
    distances_to_triangles,
    is_edge_manifold,
    label_surface,
    mesh_quality,
    nonmanifold_vertex_count,
    printability,
)
from carve.imaging.io import Geometry

SPACING = (2.5, 0.7, 0.9)


@pytest.fixture
def flipped_geometry(oblique_geometry) -> Geometry:
    """The shared oblique, anisotropic geometry with one axis flipped (left-handed grid)."""
    direction = oblique_geometry.direction_matrix @ np.diag([1.0, -1.0, 1.0])
    return Geometry(oblique_geometry.spacing_mm, oblique_geometry.origin_mm, tuple(map(tuple, direction)))


def _blob() -> np.ndarray:
    mask = np.zeros((7, 12, 11), dtype=bool)
    mask[1:5, 2:9, 3:8] = True
    mask[3:6, 5:10, 1:4] = True
    mask[2, 1, 5] = True
    return mask


@pytest.mark.parametrize("flipped", [False, True])
def test_label_surface_encloses_the_voxel_volume(oblique_geometry, flipped_geometry, flipped):
    geometry = flipped_geometry if flipped else oblique_geometry
    mask = _blob()
    surface, centres = label_surface(mask, geometry)
    assert surface.is_watertight and surface.is_winding_consistent
    assert surface.volume == pytest.approx(mask.sum() * np.prod(geometry.spacing_mm), rel=1e-9)
    n_faces = sum(np.count_nonzero(np.diff(np.pad(mask, 1).astype(int), axis=a)) for a in range(3))
    assert len(centres) == n_faces and len(surface.faces) == 2 * n_faces
    # every face centre lies half a voxel from a foreground voxel centre along one axis
    nearest = np.abs(geometry.world_to_index(centres) - np.rint(geometry.world_to_index(centres)))
    assert np.allclose(np.sort(nearest, axis=1), [0.0, 0.0, 0.5])


def test_distances_to_triangles_match_brute_force():
    rng = np.random.default_rng(3)
    triangles = rng.normal(size=(300, 3, 3)) * [4.0, 1.0, 2.0] + rng.normal(size=(300, 1, 3)) * 10.0
    points = rng.normal(size=(500, 3)) * 12.0
    pairs_tri = np.repeat(triangles[None], len(points), axis=0).reshape(-1, 3, 3)
    pairs_pts = np.repeat(points, len(triangles), axis=0)
    brute = np.linalg.norm(trimesh.triangles.closest_point(pairs_tri, pairs_pts) - pairs_pts, axis=1)
    expected = brute.reshape(len(points), len(triangles)).min(axis=1)
    np.testing.assert_allclose(distances_to_triangles(points, triangles), expected, rtol=1e-12, atol=1e-12)


def test_distances_in_chunks_are_the_same(monkeypatch):
    rng = np.random.default_rng(4)
    triangles = rng.normal(size=(200, 3, 3)) * 5.0
    points = rng.normal(size=(400, 3)) * 8.0
    whole = distances_to_triangles(points, triangles)
    monkeypatch.setattr("carve.export.mesh_quality.MAX_PAIRS", 50)
    np.testing.assert_array_equal(distances_to_triangles(points, triangles), whole)


def test_single_voxel_hausdorff_is_the_corner_to_octahedron_distance(oblique_geometry):
    # marching cubes makes an octahedron through the six face centres; its vertices lie on the voxel faces (0 mm),
    # and the voxel's corners (h0, h1, h2) lie 2 / sqrt(sum 1/h^2) from the octahedron's faces (when the foot of
    # that perpendicular falls inside a face: h_i^2 * sum 1/h^2 >= 2 for every i, true for these spacings)
    geometry = oblique_geometry.with_spacing((1.0, 0.8, 0.9))
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[1, 1, 1] = True
    mesh = marching_cubes_mesh(mask, geometry)
    assert len(mesh.vertices) == 6 and len(mesh.faces) == 8
    half = np.asarray(geometry.spacing_mm) / 2.0
    assert (half**2 * np.sum(1.0 / half**2) >= 2.0).all()
    quality = mesh_quality(mesh, mask, geometry)
    assert quality["hausdorff_mm"] == pytest.approx(2.0 / np.sqrt(np.sum(1.0 / half**2)), rel=1e-9)
    assert quality["volume_error_rel"] == pytest.approx(1.0 / 6.0 - 1.0)  # the octahedron holds 1/6 of the box
    assert quality["watertight"] and quality["euler_number"] == 2 and quality["nonmanifold_vertices"] == 0
    printable, warning = printability(quality)
    assert printable and "volume differs" in warning


def test_unsmoothed_vertices_lie_on_the_voxel_faces(oblique_geometry):
    mask = _blob()
    mesh = marching_cubes_mesh(mask, oblique_geometry)
    staircase, _ = label_surface(mask, oblique_geometry)
    assert distances_to_triangles(mesh.vertices, staircase.triangles).max() < 1e-9
    quality = mesh_quality(mesh, mask, oblique_geometry)
    assert 0.0 < quality["hd95_mm"] <= quality["hausdorff_mm"] <= 0.5 * np.linalg.norm(oblique_geometry.spacing_mm)


def test_a_shifted_mesh_is_that_far_from_the_label(oblique_geometry):
    mask = np.zeros((8, 20, 20), dtype=bool)
    mask[2:6, 4:16, 4:16] = True
    mesh = marching_cubes_mesh(mask, oblique_geometry)
    far = mesh.copy()
    shift = oblique_geometry.direction_matrix[:, 1] * 30.0  # 30 mm along the rows, beyond the box
    far.apply_translation(shift)
    near = mesh_quality(mesh, mask, oblique_geometry)["hausdorff_mm"]
    assert mesh_quality(far, mask, oblique_geometry)["hausdorff_mm"] == pytest.approx(30.0, abs=near + 1e-6)


def test_manifold_checks():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    assert is_edge_manifold(sphere) and nonmanifold_vertex_count(sphere) == 0
    # two tetrahedra sharing one vertex: closed and edge-manifold, one non-manifold vertex
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = a.copy()
    b.apply_translation((1, 1, 1))
    touching = trimesh.Trimesh(np.vstack([a.vertices, b.vertices]), np.vstack([a.faces, b.faces + 8]), process=True)
    assert touching.is_watertight and is_edge_manifold(touching)
    assert nonmanifold_vertex_count(touching) == 1
    # a fin: three triangles on one edge
    fin = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], [[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    assert not is_edge_manifold(fin)


def test_open_and_inverted_meshes_are_not_printable():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=5.0)
    mask = np.ones((2, 2, 2), dtype=bool)
    geometry = Geometry((1.0, 1.0, 1.0))
    open_mesh = trimesh.Trimesh(sphere.vertices, sphere.faces[1:])
    printable, warning = printability(mesh_quality(open_mesh, mask, geometry, surface_distance=False))
    assert not printable and "watertight" in warning
    inverted = sphere.copy()
    inverted.invert()
    printable, warning = printability(mesh_quality(inverted, mask, geometry, surface_distance=False))
    assert not printable and "inwards" in warning
    quality = mesh_quality(sphere, mask, geometry, surface_distance=False)
    assert np.isnan(quality["hausdorff_mm"]) and quality["outward_normals"]


def test_repair_fills_a_small_hole_and_turns_normals_out():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=5.0)
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[1:])
    holed.invert()
    fixed, added = repair(holed)
    assert added == 1 and fixed.is_watertight and fixed.is_winding_consistent and fixed.volume > 0
    assert fixed.volume == pytest.approx(sphere.volume)


def test_match_volume_reaches_the_target_within_its_offset_limit():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=10.0)
    grown, offset = match_volume(sphere, 1.03 * sphere.volume, max_offset_mm=1.0)
    assert grown.volume == pytest.approx(1.03 * sphere.volume, rel=1e-4)
    assert offset == pytest.approx(10.0 * (1.03 ** (1 / 3) - 1.0), rel=0.01)
    capped, offset = match_volume(sphere, 2.0 * sphere.volume, max_offset_mm=0.5)
    assert offset == pytest.approx(0.5) and capped.volume < 1.2 * sphere.volume
    open_mesh = trimesh.Trimesh(sphere.vertices, sphere.faces[1:])
    same, offset = match_volume(open_mesh, 2.0 * sphere.volume, max_offset_mm=1.0)
    assert offset == 0.0 and np.array_equal(same.vertices, open_mesh.vertices)
