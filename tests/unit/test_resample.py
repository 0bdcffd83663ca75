import numpy as np
import pytest

from carve.imaging.io import Geometry
from carve.imaging.resample import (
    resample_image,
    resample_labels,
    resample_to_reference,
    resampled_geometry,
    resize_labels,
    resize_probabilities,
    target_shape,
)


def test_target_shape_covers_same_extent():
    assert target_shape((10, 20, 30), (3.0, 1.0, 0.5), (1.5, 1.0, 1.0)) == (20, 20, 15)


def test_resampled_geometry_keeps_extent(oblique_geometry):
    shape, new_shape = (10, 20, 30), (20, 10, 15)
    new = resampled_geometry(oblique_geometry, shape, new_shape)
    # the outer voxel edges coincide: first centre minus half a new voxel equals first centre minus half an old voxel
    old_edge = oblique_geometry.index_to_world(np.array([[-0.5, -0.5, -0.5]]))
    new_edge = new.index_to_world(np.array([[-0.5, -0.5, -0.5]]))
    np.testing.assert_allclose(old_edge, new_edge, atol=1e-9)
    old_far = oblique_geometry.index_to_world(np.array(shape)[None] - 0.5)
    new_far = new.index_to_world(np.array(new_shape)[None] - 0.5)
    np.testing.assert_allclose(old_far, new_far, atol=1e-9)


def test_smooth_image_survives_resampling_round_trip():
    z, y, x = np.meshgrid(np.arange(12), np.arange(40), np.arange(40), indexing="ij")
    image = np.sin(z / 4.0) + np.cos(y / 7.0) + 0.01 * x
    geometry = Geometry((3.0, 0.8, 0.8))
    up, g_up = resample_image(image, geometry, (1.0, 1.0, 1.0))
    assert up.shape == (36, 32, 32)
    np.testing.assert_allclose(g_up.spacing_mm, (1.0, 1.0, 1.0))
    back, _ = resample_image(up, g_up, geometry.spacing_mm)
    assert back.shape == image.shape
    assert np.abs(back - image)[1:-1, 2:-2, 2:-2].max() < 0.1


def test_labels_keep_thin_structure_and_values():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[:, 10, 4:16] = 2  # one voxel thin sheet
    labels[5:9, 2:5, 2:5] = 1
    out, _ = resample_labels(labels, Geometry((1.0, 1.0, 1.0)), (1.0, 0.7, 0.7))
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 2).any(axis=(0, 2)).sum() >= 1


def test_resize_labels_identity_and_probabilities_dtype():
    labels = np.random.default_rng(0).integers(0, 3, (5, 6, 7)).astype(np.uint8)
    np.testing.assert_array_equal(resize_labels(labels, labels.shape), labels)
    p = np.random.default_rng(1).random((3, 5, 6, 7)).astype(np.float16)
    out = resize_probabilities(p, (10, 12, 14))
    assert out.shape == (3, 10, 12, 14) and out.dtype == np.float16


def test_resample_to_reference_nearest_keeps_labels(oblique_geometry):
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[2:4, 2:6, 2:6] = 3
    out = resample_to_reference(labels, oblique_geometry, labels.shape, oblique_geometry, order=0)
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
def test_constant_image_stays_constant(spacing):
    image = np.full((8, 16, 16), 7.0, np.float32)
    out, _ = resample_image(image, Geometry(spacing), (2.0, 2.0, 2.0))
    np.testing.assert_allclose(out, 7.0, atol=1e-4)
