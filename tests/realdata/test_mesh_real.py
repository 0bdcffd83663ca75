"""Meshes of real TotalSegmentator CT labels (shared data, ct/totalsegmentator_example)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from carve.io import read_image
from carve.mesh import export_label_meshes, mask_to_mesh

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
    table = export_label_meshes(labels, geometry, {LIVER: "liver", SPLEEN: "spleen", 200: "absent"}, tmp_path)
    assert (tmp_path / "liver.stl").is_file() and (tmp_path / "spleen.stl").is_file()
    assert not (tmp_path / "absent.stl").exists()
    present = table[table["file"] != ""]
    assert len(present) == 2
    assert present["watertight"].all()
    assert (present["volume_error_rel"].abs() < 0.02).all()
