"""Radial re-projections: the warp, its inverse, and their place in the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from carve.prediction.inference import sliding_window_probabilities
from carve.prediction.projection import (
    RadialWarp,
    _source_coordinates,
    projection_gammas,
    radial_projections,
    warp_volume,
)

torch.set_num_threads(1)
SHAPE = (14, 24, 20)  # anisotropic, even and odd


def smooth_image(shape=SHAPE) -> np.ndarray:
    z, y, x = (np.linspace(-1, 1, n) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    return (np.sin(2.0 * xx) + np.cos(1.5 * yy) * zz + 0.5 * np.exp(-(xx**2 + yy**2 + zz**2))).astype(np.float32)


def blob_labels(shape=SHAPE) -> np.ndarray:
    """Three classes in large smooth regions: an off-centre ball (1) inside a slab (2), background 0."""
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int64)
    labels[:, 5:19, 3:16] = 2
    ball = (zz - 7) ** 2 / 16 + (yy - 10) ** 2 / 25 + (xx - 8) ** 2 / 16 <= 1
    labels[ball] = 1
    return labels


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def test_gammas_alternate_and_grow() -> None:
    assert projection_gammas(0) == ()
    np.testing.assert_allclose(projection_gammas(4, 1.25), [0.8, 1.25, 0.64, 1.5625])
    assert [w.gamma for w in radial_projections(2, 2.0)] == [0.5, 2.0]
    with pytest.raises(ValueError, match="> 1"):
        projection_gammas(2, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        projection_gammas(-1)


def test_warp_keeps_the_box_fixes_centre_and_outside() -> None:
    coords = _source_coordinates(SHAPE, 0.7, 0, SHAPE[0])
    for a, n in enumerate(SHAPE):  # every sample lies inside the volume's outer voxel edges
        assert coords[a].min() >= -0.5 - 1e-5 and coords[a].max() <= n - 0.5 + 1e-5
    # corners lie outside the inscribed ellipsoid: untouched
    np.testing.assert_allclose(coords[:, 0, 0, 0], [0, 0, 0], atol=1e-5)
    # a point on an axis moves along it, towards the rim for gamma < 1 (the centre is shrunk)
    centre = (np.asarray(SHAPE) - 1) / 2
    z_line = coords[0, :, 11, 9]
    assert z_line[3] < 3 and z_line[-4] > SHAPE[0] - 4
    assert np.all(np.diff(z_line) > 0)  # monotone: invertible along the ray
    # gamma > 1 samples nearer the centre: the centre is enlarged
    enlarged = _source_coordinates(SHAPE, 1.4, 0, SHAPE[0])
    offset = np.abs(enlarged[:, 9, 14, 12] - centre)
    assert (offset < np.abs(np.array([9, 14, 12]) - centre)).all()


@pytest.mark.parametrize("gamma", [0.8, 1.25, 0.64])
def test_warp_and_inverse_round_trip_a_smooth_image(gamma) -> None:
    image = smooth_image()
    warped = warp_volume(image, gamma, order=3)
    assert warped.dtype == np.float32 and warped.shape == SHAPE
    assert np.abs(warped - image).max() > 0.05  # the warp does move things
    back = warp_volume(warped, 1.0 / gamma, order=3)
    span = float(image.max() - image.min())
    assert np.abs(back - image).max() < 0.05 * span
    assert np.abs(back - image).mean() < 0.005 * span
    linear = warp_volume(warp_volume(image, gamma, order=1), 1.0 / gamma, order=1)
    assert np.abs(linear - image).mean() < 0.02 * span


def test_identity_strength_is_exact_and_out_must_be_separate() -> None:
    image = smooth_image()
    np.testing.assert_array_equal(warp_volume(image, 1.0), image)
    with pytest.raises(ValueError, match="separate float32"):
        warp_volume(image, 0.8, out=image)
    with pytest.raises(ValueError, match="order"):
        warp_volume(image, 0.8, order=2)
    with pytest.raises(ValueError, match="gamma"):
        RadialWarp(0.0)


def test_unproject_keeps_probabilities_normalised() -> None:
    rng = np.random.default_rng(0)
    logits = ndimage.gaussian_filter(rng.normal(size=(3, *SHAPE)), sigma=(0, 2, 2, 2))
    p = np.exp(logits) / np.exp(logits).sum(0)
    p = p.astype(np.float32)
    RadialWarp(1.25).unproject_(p)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    assert p.min() >= 0 and p.max() <= 1


def test_project_every_channel() -> None:
    image = np.stack([smooth_image(), -smooth_image()])
    projected = RadialWarp(0.8).project(image)
    assert projected.shape == image.shape
    np.testing.assert_allclose(projected[1], -projected[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"\(C, z, y, x\)"):
        RadialWarp(0.8).project(image[0])


def test_identity_model_gives_back_the_input_labels_through_projections() -> None:
    labels = blob_labels()
    image = (np.eye(3, dtype=np.float32)[labels] * 10.0).transpose(3, 0, 1, 2).copy()
    projections = radial_projections(3)
    result = sliding_window_probabilities(
        [Identity()], image, (8, 12, 12), n_classes=3, overlap=0.5, projections=projections
    )
    assert result.n_members == 4
    predicted = result.mean_probabilities.argmax(0)
    interior = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)  # away from borders
    np.testing.assert_array_equal(predicted[interior], labels[interior])
    assert (predicted == labels).mean() > 0.98
    np.testing.assert_allclose(result.mean_probabilities.sum(0), 1.0, atol=1e-5)
    # the projected members disagree only near label borders: there the std is positive, inside it is ~0
    assert result.std.max() > 0.05
    assert result.std[:, interior].max() < 0.05


def test_projected_members_use_the_projected_image() -> None:
    seen: list[torch.Tensor] = []

    class Recorder(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return super().forward(x)

    labels = blob_labels()
    image = (np.eye(3, dtype=np.float32)[labels] * 10.0).transpose(3, 0, 1, 2).copy()
    sliding_window_probabilities([Recorder()], image, SHAPE, n_classes=3, projections=[RadialWarp(1.5)])
    assert len(seen) == 2
    np.testing.assert_allclose(seen[0][0].numpy(), image, atol=1e-6)
    np.testing.assert_allclose(seen[1][0].numpy(), RadialWarp(1.5).project(image), atol=1e-5)
