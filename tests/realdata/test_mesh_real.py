"""Meshes of real TotalSegmentator CT labels (shared data, ct/totalsegmentator_example)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from carve.export.mesh import MeshOptions, export_label_meshes, mask_to_mesh
from carve.imaging.io import Geometry, read_image

# TotalSegmentator v2 "total" class map (map_to_binary.py beside the file)
LIVER, SPLEEN = 5, 1


@pytest.fixture(scope="module")
def example_seg(shared_data):
    path = shared_data / "ct" / "totalsegmentator_example" / "example_seg.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the shared data")
    return read_image(path)


@pytest.mark.realdata
def test_liver_mesh_is_watertight_with_voxel_volume(example_seg):
    labels, geometry = example_seg
    liver = labels == LIVER
    _, n_components = ndimage.label(liver)
    assert n_components == 1 and liver.sum() > 10_000  # a large, single-component label
    voxel_mm3 = liver.sum() * np.prod(geometry.spacing_mm)
    mesh = mask_to_mesh(liver, geometry)
    assert mesh.is_watertight and mesh.is_winding_consistent
    # measured: -0.13 % without smoothing, -0.06 % after 30 Taubin iterations (3 mm voxels)
    assert abs(mesh.volume / voxel_mm3 - 1.0) < 0.02
    # the mesh lies where the voxels are: centroid within one voxel of the voxel centroid
    voxel_centroid = geometry.index_to_world(np.argwhere(liver).mean(axis=0))[0]
    assert np.linalg.norm(mesh.center_mass - voxel_centroid) < max(geometry.spacing_mm)
    smooth = mask_to_mesh(liver, geometry, smoothing_iterations=30)
    assert smooth.is_watertight
    assert abs(smooth.volume / voxel_mm3 - 1.0) < 0.02


@pytest.mark.realdata
def test_export_real_labels(example_seg, tmp_path):
    labels, geometry = example_seg
    # a synthetic uncertainty map on the real grid, rising from 0 to 1 along the case's first array axis
    ramp = np.linspace(0.0, 1.0, labels.shape[0], dtype=np.float32)[:, None, None]
    uncertainty = (np.broadcast_to(ramp, labels.shape).copy(), geometry)
    options = MeshOptions(formats=("stl", "glb"))
    table = export_label_meshes(labels, geometry, {LIVER: "liver", SPLEEN: "spleen", 200: "absent"}, tmp_path,
                                options=options, uncertainty=uncertainty)  # fmt: skip
    assert (tmp_path / "liver.stl").is_file() and (tmp_path / "spleen.glb").is_file()
    assert (tmp_path / "uncertainty" / "liver.ply").is_file()
    assert not list(tmp_path.glob("absent*"))
    present = table[table["file"] != ""]
    assert len(present) == 2
    assert present["watertight"].all() and present["printable"].all() and present["edge_manifold"].all()
    assert (present["volume_error_rel"].abs() < 0.02).all()
    diagonal = float(np.linalg.norm(geometry.spacing_mm))
    assert (present["hausdorff_mm"] < diagonal).all() and (present["hd95_mm"] <= present["hausdorff_mm"]).all()
    assert present["uncertainty_mean"].between(0.0, 1.0).all()
    for name in ("liver", "spleen"):
        mesh = trimesh.load(tmp_path / f"{name}.stl", file_type="stl")
        value = {"liver": LIVER, "spleen": SPLEEN}[name]
        voxel_mm3 = np.count_nonzero(labels == value) * np.prod(geometry.spacing_mm)
        assert mesh.is_watertight and abs(mesh.volume / voxel_mm3 - 1.0) < 0.02


@pytest.mark.realdata
def test_every_real_label_gives_a_printable_mesh(example_seg, tmp_path):
    labels, geometry = example_seg
    values = [int(v) for v in np.unique(labels) if v]
    assert len(values) > 30  # organs, vessels, vertebrae, ribs, muscles
    table = export_label_meshes(labels, geometry, {v: f"label_{v}" for v in values}, tmp_path)
    assert table["watertight"].all() and table["printable"].all()
    large = table[table["voxels"] >= 100]
    assert (large["volume_error_rel"].abs() < 0.02).all()
    assert (table["hausdorff_mm"] < np.linalg.norm(geometry.spacing_mm)).all()


@pytest.mark.realdata
def test_real_uncertainty_on_its_own_grid(example_seg, tmp_path):
    labels, geometry = example_seg
    # the same ramp on a grid of half the resolution: sampling goes through world coordinates
    coarse = Geometry(tuple(2 * s for s in geometry.spacing_mm), geometry.origin_mm, geometry.direction)
    shape = tuple((n + 1) // 2 for n in labels.shape)
    ramp = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None] / shape[0], shape).copy()
    table = export_label_meshes(labels, geometry, {LIVER: "liver"}, tmp_path, uncertainty=(ramp, coarse))
    ply = trimesh.load(tmp_path / "uncertainty" / "liver.ply", file_type="ply", process=False)
    stored = ply.metadata["_ply_raw"]["vertex"]["data"]["uncertainty"]
    expected = coarse.world_to_index(ply.vertices)[:, 0] / shape[0]
    np.testing.assert_allclose(stored, np.clip(expected, 0, (shape[0] - 1) / shape[0]), atol=1e-5)
    assert table["uncertainty_mean"].iloc[0] == pytest.approx(float(np.mean(stored)), abs=1e-5)
