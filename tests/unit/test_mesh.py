"""carve.mesh on spheres and ellipsoids placed by oblique, anisotropic, flipped geometries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from carve.io import Geometry
from carve.mesh import STL_HEADER, export_label_meshes, mask_to_mesh, mesh_bytes, safe_file_stem

SPACING = (2.5, 0.7, 0.9)
ORIGIN = (-40.0, 12.5, 7.0)
SHAPE = (20, 64, 52)
CENTRE_INDEX = (9.6, 31.3, 25.8)
ROTATION = Rotation.from_euler("zyx", [20, 35, -15], degrees=True).as_matrix()
DIRECTIONS = {
    "oblique": ROTATION,  # det +1
    "oblique_flipped": ROTATION @ np.diag([1.0, 1.0, -1.0]),  # det -1: one axis flipped
}


def _geometry(direction: np.ndarray) -> Geometry:
    return Geometry(SPACING, ORIGIN, tuple(map(tuple, direction)))


def _ellipsoid_mask(geometry: Geometry, semi_axes_mm) -> tuple[np.ndarray, np.ndarray]:
    """Voxels whose centres lie inside an LPS-axis-aligned ellipsoid; returns (mask, world centre)."""
    centre = geometry.index_to_world(np.array(CENTRE_INDEX))[0]
    world = geometry.index_to_world(np.indices(SHAPE).reshape(3, -1).T)
    inside = np.sum(((world - centre) / np.asarray(semi_axes_mm)) ** 2, axis=1) <= 1.0
    return inside.reshape(SHAPE), centre


def _assert_outward(mesh: trimesh.Trimesh, centre: np.ndarray) -> None:
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - centre)
    assert np.mean(outward > 0) > 0.99
    assert mesh.volume > 0


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_sphere_mesh_volume_centre_and_orientation(direction):
    geometry = _geometry(DIRECTIONS[direction])
    radius = 15.0
    mask, centre = _ellipsoid_mask(geometry, (radius,) * 3)
    mesh = mask_to_mesh(mask, geometry)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2  # one closed sphere-like surface
    analytic_mm3 = 4.0 / 3.0 * np.pi * radius**3
    # measured: -0.15 % of the analytic volume, -0.34 % of the voxel volume
    assert abs(mesh.volume / analytic_mm3 - 1.0) < 0.03
    assert abs(mesh.volume / (mask.sum() * np.prod(SPACING)) - 1.0) < 0.01
    assert np.linalg.norm(mesh.center_mass - centre) < 0.5 * min(SPACING)  # measured 0.004 mm
    _assert_outward(mesh, centre)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_ellipsoid_mesh_in_ras(direction):
    geometry = _geometry(DIRECTIONS[direction])
    semi_axes = (18.0, 12.0, 9.0)
    mask, centre = _ellipsoid_mask(geometry, semi_axes)
    lps = mask_to_mesh(mask, geometry)
    ras = mask_to_mesh(mask, geometry, coordinates="RAS")
    assert ras.is_watertight and ras.is_winding_consistent
    assert abs(lps.volume / (4.0 / 3.0 * np.pi * np.prod(semi_axes)) - 1.0) < 0.03
    assert ras.volume == pytest.approx(lps.volume)
    ras_centre = centre * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(ras.vertices, lps.vertices * np.array([-1.0, -1.0, 1.0]))
    assert np.linalg.norm(ras.center_mass - ras_centre) < 0.5 * min(SPACING)
    _assert_outward(ras, ras_centre)
    # the extent along each LPS axis matches the semi-axes to within a voxel diagonal
    extent = (lps.bounds[1] - lps.bounds[0]) / 2.0
    np.testing.assert_allclose(extent, semi_axes, atol=np.linalg.norm(SPACING))


def test_smoothing_keeps_volume_and_closure():
    geometry = _geometry(DIRECTIONS["oblique_flipped"])
    mask, centre = _ellipsoid_mask(geometry, (15.0, 15.0, 15.0))
    raw = mask_to_mesh(mask, geometry)
    smooth = mask_to_mesh(mask, geometry, smoothing_iterations=20)
    assert smooth.is_watertight and smooth.is_winding_consistent
    assert abs(smooth.volume / raw.volume - 1.0) < 0.01
    assert not np.allclose(smooth.vertices, raw.vertices)
    # smoothing makes the surface rounder: the spread of vertex radii shrinks
    assert np.std(np.linalg.norm(smooth.vertices - centre, axis=1)) < np.std(
        np.linalg.norm(raw.vertices - centre, axis=1)
    )
    _assert_outward(smooth, centre)


def test_step_size_two_is_coarser_and_closed():
    geometry = _geometry(DIRECTIONS["oblique"])
    mask, _ = _ellipsoid_mask(geometry, (15.0, 15.0, 15.0))
    fine = mask_to_mesh(mask, geometry)
    coarse = mask_to_mesh(mask, geometry, step_size=2)
    assert coarse.is_watertight and len(coarse.faces) < len(fine.faces) / 2
    assert abs(coarse.volume / fine.volume - 1.0) < 0.05


def test_object_touching_the_border_is_closed():
    geometry = Geometry(SPACING)
    mask = np.ones((4, 5, 6), dtype=bool)
    mesh = mask_to_mesh(mask, geometry)
    assert mesh.is_watertight
    # a box of voxels: marching cubes cuts the 12 edges and 8 corners, so the volume is a little smaller
    assert 0.5 < mesh.volume / (mask.size * np.prod(SPACING)) < 1.0


def test_mask_to_mesh_errors():
    geometry = Geometry(SPACING)
    with pytest.raises(ValueError, match="empty"):
        mask_to_mesh(np.zeros((3, 3, 3), dtype=bool), geometry)
    with pytest.raises(ValueError, match="coordinates"):
        mask_to_mesh(np.ones((3, 3, 3), dtype=bool), geometry, coordinates="RAI")
    with pytest.raises(ValueError, match="3D"):
        mask_to_mesh(np.ones((3, 3), dtype=bool), geometry)


def test_safe_file_stem():
    assert safe_file_stem("kidney_left") == "kidney_left"
    assert safe_file_stem("Left Kidney/cyst") == "Left_Kidney_cyst"
    with pytest.raises(ValueError, match="file name"):
        safe_file_stem("//")


def test_export_label_meshes(tmp_path):
    geometry = _geometry(DIRECTIONS["oblique_flipped"])
    sphere, _ = _ellipsoid_mask(geometry, (12.0, 12.0, 12.0))
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[sphere] = 1
    labels[2:6, 5:15, 5:15] = 2
    stale = tmp_path / "absent.stl"
    stale.write_bytes(b"old")
    table = export_label_meshes(labels, geometry, {1: "sphere", 2: "box", 3: "absent"}, tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.stl", "meshes.tsv", "sphere.stl"]
    assert list(table["label"]) == ["sphere", "box", "absent"]
    assert list(table["file"]) == ["sphere.stl", "box.stl", ""]
    assert table["watertight"].iloc[:2].all() and table["winding_consistent"].iloc[:2].all()
    assert list(table["euler_number"].iloc[:2]) == [2, 2]
    assert (table["volume_error_rel"].iloc[:2].abs() < 0.05).all()
    assert table["triangles"].iloc[2] == 0 and "absent" in table["note"].iloc[2]
    assert table["voxel_volume_ml"].iloc[1] == pytest.approx(400 * np.prod(SPACING) / 1000)

    on_disk = pd.read_csv(tmp_path / "meshes.tsv", sep="\t", keep_default_na=False)
    assert list(on_disk["label"]) == ["sphere", "box", "absent"]
    assert on_disk["mesh_volume_ml"].iloc[0] == pytest.approx(table["mesh_volume_ml"].iloc[0])

    raw = (tmp_path / "sphere.stl").read_bytes()
    assert raw[:80] == STL_HEADER
    assert raw[:80].rstrip(b"\0") == b"carve mesh"
    reloaded = trimesh.load(tmp_path / "sphere.stl", file_type="stl")
    assert reloaded.is_watertight
    assert reloaded.volume / 1000 == pytest.approx(table["mesh_volume_ml"].iloc[0], rel=1e-5)


@pytest.mark.parametrize("file_format", ["obj", "ply"])
def test_other_formats_reload(tmp_path, file_format):
    geometry = Geometry(SPACING, ORIGIN)
    labels = np.zeros((8, 20, 20), dtype=np.int16)
    labels[2:6, 4:16, 5:15] = 7
    table = export_label_meshes(labels, geometry, {7: "block"}, tmp_path, file_format=file_format)
    path = tmp_path / f"block.{file_format}"
    assert table["file"].iloc[0] == path.name
    reloaded = trimesh.load(path, file_type=file_format, process=True)
    assert reloaded.volume / 1000 == pytest.approx(table["mesh_volume_ml"].iloc[0], rel=1e-5)


def test_mesh_bytes_rejects_unknown_format():
    mesh = mask_to_mesh(np.ones((2, 2, 2), dtype=bool), Geometry(SPACING))
    assert mesh_bytes(mesh)[:10] == b"carve mesh"
    with pytest.raises(ValueError, match="file_format"):
        mesh_bytes(mesh, "3mf")


def test_duplicate_file_names_are_refused(tmp_path):
    labels = np.ones((3, 3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="duplicate"):
        export_label_meshes(labels, Geometry(SPACING), {1: "a b", 2: "a/b"}, tmp_path)


def test_fragmented_masks_touching_along_edges_and_corners_stay_watertight():
    # a poorly trained model gives speckled masks whose voxels touch only along edges or at corners
    geometry = Geometry((2.5, 0.7, 0.9))
    for seed in range(10):
        speckle = np.random.default_rng(seed).random((10, 12, 12)) > 0.7
        assert mask_to_mesh(speckle, geometry).is_watertight
    diagonal = np.zeros((6, 6, 6), bool)
    diagonal[2, 2, 2] = diagonal[3, 3, 2] = diagonal[4, 4, 3] = True
    mesh = mask_to_mesh(diagonal, geometry)
    assert mesh.is_watertight and mesh.volume > 0
