"""carve.export.mesh on spheres and ellipsoids placed by oblique, anisotropic, flipped geometries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from carve.export.mesh import STL_HEADER, MeshOptions, export_label_meshes, mask_to_mesh, mesh_bytes, safe_file_stem
from carve.imaging.io import Geometry

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


def test_every_format_reloads_with_the_same_volume(tmp_path):
    geometry = Geometry(SPACING, ORIGIN)
    labels = np.zeros((8, 20, 20), dtype=np.int16)
    labels[2:6, 4:16, 5:15] = 7
    formats = ["stl", "obj", "ply", "glb"]
    table = export_label_meshes(labels, geometry, {7: "block"}, tmp_path, options=MeshOptions(formats=formats))
    assert table["file"].iloc[0] == "block.stl;block.obj;block.ply;block.glb"
    for file_format in formats:
        reloaded = trimesh.load(tmp_path / f"block.{file_format}", file_type=file_format, force="mesh", process=True)
        assert reloaded.is_watertight, file_format
        assert reloaded.volume / 1000 == pytest.approx(table["mesh_volume_ml"].iloc[0], rel=1e-5), file_format


def test_mesh_bytes_rejects_unknown_format():
    mesh = mask_to_mesh(np.ones((2, 2, 2), dtype=bool), Geometry(SPACING))
    assert mesh_bytes(mesh)[:10] == b"carve mesh"
    with pytest.raises(ValueError, match="file_format"):
        mesh_bytes(mesh, "3mf")
    assert mesh_bytes(mesh, "glb")[:4] == b"glTF"


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


# ---- analytic accuracy, coordinates, components, decimation ------------------------------------------------------

# The voxel staircase of a 20 mm sphere on a 2.0 x 0.7 x 0.9 mm grid: 50 passes of the volume-constrained diffusion
# remove it, and the volume is matched to the voxel volume. Measured (both direction signs): volume within 0.25 %,
# area within 0.5 % of the analytic values; vertices within 0.45 mm of the analytic surface.
ANALYTIC_SPACING = (2.0, 0.7, 0.9)
ANALYTIC_OPTIONS = MeshOptions(smoothing_method="volume_laplacian", smoothing_iterations=50)


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface area of an ellipsoid (Legendre's form with incomplete elliptic integrals); a sphere if a == b == c."""
    from scipy.special import ellipeinc, ellipkinc

    a, b, c = sorted((a, b, c), reverse=True)
    if a - c < 1e-12:
        return 4.0 * np.pi * a**2
    phi = np.arccos(c / a)
    m = (a**2 * (b**2 - c**2)) / (b**2 * (a**2 - c**2))
    s = np.sin(phi)
    return 2 * np.pi * c**2 + 2 * np.pi * a * b / s * (ellipeinc(phi, m) * s**2 + ellipkinc(phi, m) * np.cos(phi) ** 2)


def test_ellipsoid_area_formula():
    assert _ellipsoid_area(10.0, 10.0, 10.0) == pytest.approx(4 * np.pi * 100)
    assert _ellipsoid_area(10.0, 10.0 + 1e-6, 10.0 - 1e-6) == pytest.approx(4 * np.pi * 100, rel=1e-6)
    assert _ellipsoid_area(3.0, 2.0, 1.0) == pytest.approx(48.88214630, rel=1e-8)  # the known reference value


def _analytic_labels(direction: np.ndarray, semi_axes_mm) -> tuple[np.ndarray, Geometry, np.ndarray]:
    geometry = Geometry(ANALYTIC_SPACING, ORIGIN, tuple(map(tuple, direction)))
    shape = tuple(int(2 * max(semi_axes_mm) / s) + 6 for s in ANALYTIC_SPACING)
    centre = geometry.index_to_world(np.array(shape) / 2.0 - 0.37)[0]
    world = geometry.index_to_world(np.indices(shape).reshape(3, -1).T)
    inside = np.sum(((world - centre) / np.asarray(semi_axes_mm)) ** 2, axis=1) <= 1.0
    return inside.reshape(shape).astype(np.uint8), geometry, centre


@pytest.mark.parametrize("semi_axes", [(20.0, 20.0, 20.0), (24.0, 18.0, 14.0)], ids=["sphere", "ellipsoid"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_volume_and_area_within_one_percent_of_analytic(tmp_path, semi_axes, direction):
    labels, geometry, centre = _analytic_labels(DIRECTIONS[direction], semi_axes)
    table = export_label_meshes(labels, geometry, {1: "body"}, tmp_path, options=ANALYTIC_OPTIONS)
    mesh = trimesh.load(tmp_path / "body.stl", file_type="stl")
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert abs(mesh.volume / (4.0 / 3.0 * np.pi * np.prod(semi_axes)) - 1.0) < 0.01
    assert abs(mesh.area / _ellipsoid_area(*semi_axes) - 1.0) < 0.01
    # where the label lies, in world millimetres: every vertex is near the analytic surface, outward normals
    scaled = np.linalg.norm((mesh.vertices - centre) / np.asarray(semi_axes), axis=1)
    assert np.abs(scaled - 1.0).max() * min(semi_axes) < 0.5 * np.linalg.norm(ANALYTIC_SPACING)
    assert np.linalg.norm(mesh.center_mass - centre) < 0.1
    _assert_outward(mesh, centre)
    row = table.iloc[0]
    assert row["printable"] and row["watertight"] and row["edge_manifold"] and row["euler_number"] == 2
    assert abs(row["volume_error_rel"]) < 1e-3  # matched to the voxel volume
    assert 0 < row["hd95_mm"] <= row["hausdorff_mm"] < np.linalg.norm(ANALYTIC_SPACING)


def test_taubin_leaves_the_staircase_area():
    # the default Taubin smoothing keeps closer to the voxels but leaves a few per cent of extra area
    labels, geometry, _ = _analytic_labels(DIRECTIONS["oblique"], (20.0, 20.0, 20.0))
    mesh = mask_to_mesh(labels, geometry, smoothing_iterations=10)
    assert mesh.area / (4 * np.pi * 20.0**2) - 1.0 > 0.02


def test_ras_output_negates_x_and_y(tmp_path):
    labels, geometry, _ = _analytic_labels(DIRECTIONS["oblique_flipped"], (12.0, 9.0, 7.0))
    lps = export_label_meshes(labels, geometry, {1: "body"}, tmp_path / "lps")
    ras = export_label_meshes(labels, geometry, {1: "body"}, tmp_path / "ras", options=MeshOptions(coordinates="RAS"))
    a = trimesh.load(tmp_path / "lps" / "body.stl", file_type="stl", process=False)
    b = trimesh.load(tmp_path / "ras" / "body.stl", file_type="stl", process=False)
    np.testing.assert_allclose(b.vertices, a.vertices * np.array([-1.0, -1.0, 1.0]), atol=1e-4)
    assert b.volume == pytest.approx(a.volume, rel=1e-6) and b.volume > 0  # still outward
    assert lps["mesh_volume_ml"].iloc[0] == pytest.approx(ras["mesh_volume_ml"].iloc[0])


def test_components_are_split_largest_first(tmp_path):
    geometry = Geometry(SPACING, ORIGIN, tuple(map(tuple, ROTATION)))
    labels = np.zeros((12, 20, 20), dtype=np.uint8)
    labels[1:5, 2:8, 2:8] = 1  # 144 voxels
    labels[1:4, 12:18, 12:16] = 1  # 72 voxels
    labels[7:10, 2:5, 2:5] = 1  # 27 voxels
    labels[10, 5, 5] = 1  # touches the previous block only at a corner: its own component
    labels[6:10, 10:14, 10:14] = 2
    options = MeshOptions(split_components=True)
    table = export_label_meshes(labels, geometry, {1: "bits", 2: "block"}, tmp_path, options=options)
    assert list(table["label"]) == ["bits"] * 4 + ["block"]
    assert list(table["component"]) == [1, 2, 3, 4, 1]
    assert list(table["voxels"]) == [144, 72, 27, 1, 64]
    assert list(table["file"]) == ["bits_1.stl", "bits_2.stl", "bits_3.stl", "bits_4.stl", "block_1.stl"]
    assert "4 face-connected components" in table["note"].iloc[0]
    assert table["watertight"].all() and (table["shells"] == 1).all()
    for name, voxels in zip(table["file"], table["voxels"], strict=True):
        mesh = trimesh.load(tmp_path / name, file_type="stl")
        assert mesh.body_count == 1 and mesh.is_watertight
        if voxels > 1:
            assert mesh.volume == pytest.approx(voxels * np.prod(SPACING), rel=0.02)
    # a lone voxel smooths to a small blob: printable, but its volume is flagged
    assert table["printable"].iloc[3] and "volume differs" in table["warning"].iloc[3]


@pytest.mark.parametrize(("target", "expected"), [({"target_triangles": 600}, 600), ({"target_fraction": 0.2}, None)])
def test_decimation_reaches_its_target_and_stays_watertight(tmp_path, target, expected):
    labels, geometry, centre = _analytic_labels(DIRECTIONS["oblique"], (14.0, 11.0, 9.0))
    full = export_label_meshes(labels, geometry, {1: "body"}, tmp_path / "full")
    table = export_label_meshes(labels, geometry, {1: "body"}, tmp_path / "dec", options=MeshOptions(**target))
    expected = expected or round(0.2 * full["triangles"].iloc[0])
    assert 0.95 * expected <= table["triangles"].iloc[0] <= expected
    mesh = trimesh.load(tmp_path / "dec" / "body.stl", file_type="stl")
    assert len(mesh.faces) == table["triangles"].iloc[0]
    assert mesh.is_watertight and mesh.is_winding_consistent and table["printable"].iloc[0]
    assert abs(table["volume_error_rel"].iloc[0]) < 0.005
    assert table["hausdorff_mm"].iloc[0] < np.linalg.norm(ANALYTIC_SPACING)
    _assert_outward(mesh, centre)


def test_mesh_options_from_config():
    assert MeshOptions.from_config({"format": "ply"}).formats == ("ply",)
    options = MeshOptions.from_config({"format": ["stl", "glb"], "coordinates": "RAS", "target_fraction": 0.5})
    assert options.formats == ("stl", "glb") and options.coordinates == "RAS" and options.target_fraction == 0.5
    assert MeshOptions.from_config({}) == MeshOptions()
    for bad in ({"format": "3mf"}, {"format": ["stl", "stl"]}, {"coordinates": "RAI"}, {"target_fraction": 0.0},
                {"smoothing_method": "sinc"}, {"target_triangles": 2}, {"colour": True}):  # fmt: skip
        with pytest.raises(ValueError):
            MeshOptions.from_config(bad)


def test_empty_label_gets_a_note_and_no_file(tmp_path):
    labels = np.zeros((6, 8, 8), dtype=np.uint8)
    labels[1:4, 2:6, 2:6] = 1
    uncertainty = (np.full(labels.shape, 0.5, np.float32), Geometry(SPACING))
    options = MeshOptions(formats=("stl", "ply"))
    table = export_label_meshes(labels, Geometry(SPACING), {1: "here", 2: "gone"}, tmp_path, options=options,
                                uncertainty=uncertainty)  # fmt: skip
    gone = table.set_index("label").loc["gone"]
    assert gone["file"] == "" and gone["uncertainty_file"] == "" and gone["triangles"] == 0
    assert "absent" in gone["note"] and not gone["printable"]
    assert not list(tmp_path.glob("gone*")) and not list((tmp_path / "uncertainty").glob("gone*"))
    assert (tmp_path / "here.stl").is_file() and (tmp_path / "uncertainty" / "here.ply").is_file()


def test_exports_are_byte_identical_between_runs(tmp_path):
    labels, geometry, _ = _analytic_labels(DIRECTIONS["oblique"], (10.0, 8.0, 6.0))
    uncertainty = (np.random.default_rng(0).random(labels.shape).astype(np.float32), geometry)
    options = MeshOptions(formats=("stl", "obj", "ply", "glb"), target_fraction=0.5)
    runs = []
    for run in ("a", "b"):
        export_label_meshes(labels, geometry, {1: "body"}, tmp_path / run, options=options, uncertainty=uncertainty)
        runs.append({p.relative_to(tmp_path / run): p.read_bytes() for p in (tmp_path / run).rglob("*") if p.is_file()})
    assert len(runs[0]) == 7 and runs[0] == runs[1]
