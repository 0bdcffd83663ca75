"""Uncertainty on the surface: trilinear sampling through the geometry, colour maps, coloured PLY and GLB files."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import trimesh

from carve.export.mesh import MeshOptions, export_label_meshes
from carve.export.mesh_colour import colormap_rgba, colour_by_volume, sample_trilinear
from carve.imaging.io import Geometry

GRADIENT_MM = np.array([0.004, -0.010, 0.007])  # uncertainty rises by this much per LPS millimetre
GRADIENT_AT = np.array([10.0, 20.0, 5.0])  # where it is 0.5


def _gradient_map(geometry: Geometry, shape) -> np.ndarray:
    """An uncertainty map that is linear in LPS millimetres (trilinear interpolation reproduces it exactly)."""
    world = geometry.index_to_world(np.indices(shape).reshape(3, -1).T)
    return (0.5 + (world - GRADIENT_AT) @ GRADIENT_MM).reshape(shape)


def _expected(points_mm: np.ndarray) -> np.ndarray:
    return 0.5 + (points_mm - GRADIENT_AT) @ GRADIENT_MM


def test_trilinear_sampling_through_an_oblique_geometry(oblique_geometry):
    shape = (16, 40, 36)
    volume = _gradient_map(oblique_geometry, shape)
    inner = oblique_geometry.index_to_world(np.random.default_rng(0).uniform(1, np.array(shape) - 2, size=(200, 3)))
    np.testing.assert_allclose(sample_trilinear(volume, oblique_geometry, inner), _expected(inner), atol=1e-12)
    # between voxel centres along one axis: the mean of the two
    corner = oblique_geometry.index_to_world(np.array([[4.0, 5.0, 6.5]]))
    a, b = volume[4, 5, 6], volume[4, 5, 7]
    assert sample_trilinear(volume, oblique_geometry, corner)[0] == pytest.approx((a + b) / 2)


def test_colormap_rgba():
    rgba = colormap_rgba(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]), "viridis")
    expected = np.rint(matplotlib.colormaps["viridis"](np.array([0.0, 0.0, 0.5, 1.0, 1.0])) * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgba, expected)  # clipped to the fixed range
    with pytest.raises(ValueError, match="colour map"):
        colormap_rgba(np.zeros(3), "no_such_map")
    with pytest.raises(ValueError, match="increasing"):
        colormap_rgba(np.zeros(3), "viridis", (1.0, 1.0))


def test_colour_by_volume_keeps_geometry(oblique_geometry):
    shape = (16, 40, 36)
    volume = _gradient_map(oblique_geometry, shape)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=6.0)
    sphere.apply_translation(oblique_geometry.index_to_world(np.array([8.0, 20.0, 18.0]))[0])
    coloured, values = colour_by_volume(sphere, volume, oblique_geometry, colormap="plasma")
    np.testing.assert_allclose(values, _expected(sphere.vertices), atol=1e-12)
    np.testing.assert_array_equal(coloured.faces, sphere.faces)
    np.testing.assert_array_equal(coloured.visual.vertex_colors, colormap_rgba(values, "plasma"))
    np.testing.assert_allclose(coloured.vertex_attributes["uncertainty"], values, rtol=1e-6)


@pytest.mark.parametrize("coordinates", ["LPS", "RAS"])
def test_exported_colours_follow_a_known_gradient(tmp_path, oblique_geometry, coordinates):
    labels = np.zeros((10, 30, 30), dtype=np.uint8)
    labels[2:8, 6:24, 8:22] = 1
    # the uncertainty map on its own, coarser and shifted grid: sampling goes through world coordinates
    unc_geometry = Geometry((3.0, 1.5, 1.1), np.asarray(oblique_geometry.origin_mm) - 5.0, oblique_geometry.direction)
    unc_shape = (14, 30, 36)
    uncertainty = (_gradient_map(unc_geometry, unc_shape).astype(np.float32), unc_geometry)
    options = MeshOptions(coordinates=coordinates, colormap="viridis")
    table = export_label_meshes(labels, oblique_geometry, {1: "organ"}, tmp_path, options=options,
                                uncertainty=uncertainty)  # fmt: skip
    assert table["uncertainty_file"].iloc[0] == "uncertainty/organ.ply;uncertainty/organ.glb"
    flip = np.array([-1.0, -1.0, 1.0]) if coordinates == "RAS" else np.ones(3)

    ply = trimesh.load(tmp_path / "uncertainty" / "organ.ply", file_type="ply", process=False)
    stl = trimesh.load(tmp_path / "organ.stl", file_type="stl", process=True)
    assert len(ply.vertices) == len(stl.vertices) and ply.is_watertight
    np.testing.assert_allclose(np.sort(ply.vertices, axis=0), np.sort(stl.vertices, axis=0), atol=1e-4)
    lps = np.asarray(ply.vertices) * flip  # back to LPS, where the gradient is defined
    expected = _expected(lps)
    stored = ply.metadata["_ply_raw"]["vertex"]["data"]["uncertainty"]
    np.testing.assert_allclose(stored, expected, atol=1e-5)  # float32 in the file
    np.testing.assert_array_equal(ply.visual.vertex_colors, colormap_rgba(stored, "viridis"))
    assert table["uncertainty_mean"].iloc[0] == pytest.approx(expected.mean(), abs=1e-5)
    # the range of the gradient over the organ spans several colours
    assert np.ptp(expected) > 0.1 and len(np.unique(ply.visual.vertex_colors, axis=0)) > 20

    scene = trimesh.load(io.BytesIO((tmp_path / "uncertainty" / "organ.glb").read_bytes()), file_type="glb")
    glb = next(iter(scene.geometry.values()))
    np.testing.assert_allclose(glb.vertices, ply.vertices, atol=1e-4)
    np.testing.assert_array_equal(glb.visual.vertex_colors, ply.visual.vertex_colors)


def test_uncertainty_colour_can_be_switched_off(tmp_path):
    labels = np.zeros((6, 8, 8), dtype=np.uint8)
    labels[1:4, 2:6, 2:6] = 1
    geometry = Geometry((2.5, 0.7, 0.9))
    uncertainty = (np.full(labels.shape, 0.3, np.float32), geometry)
    table = export_label_meshes(labels, geometry, {1: "organ"}, tmp_path,
                                options=MeshOptions(uncertainty_colour=False), uncertainty=uncertainty)  # fmt: skip
    assert not (tmp_path / "uncertainty").exists()
    assert table["uncertainty_file"].iloc[0] == "" and np.isnan(table["uncertainty_mean"].iloc[0])
