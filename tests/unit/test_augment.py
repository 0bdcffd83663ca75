"""carve.training.augment: identity, label integrity, mirroring, physical rotations, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from carve.training.augment import AugmentConfig, augment_batch, rotation_matrices, spatial_margin, warp

torch.set_num_threads(1)

OFF = AugmentConfig(
    p_rotation=0, p_scaling=0, p_elastic=0, p_mirror=0, p_gamma=0, p_brightness=0, p_contrast=0, p_noise=0, p_blur=0
)
SPACING = (2.5, 0.8, 0.8)


def _batch(crop=(10, 20, 20), b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (b, *crop), generator=g).to(torch.uint8)
    images = torch.randn(b, 2, *crop, generator=g) + labels[:, None].float()
    return images, labels


def test_identity_when_all_probabilities_are_zero() -> None:
    images, labels = _batch()
    x, y = augment_batch(images, labels, OFF, (10, 20, 20), SPACING, torch.Generator().manual_seed(0))
    assert torch.equal(x, images) and torch.equal(y, labels.long())
    x, y = augment_batch(images, labels, OFF, (6, 12, 16), SPACING, torch.Generator().manual_seed(0))
    assert torch.equal(x, images[:, :, 2:8, 4:16, 2:18]) and torch.equal(y, labels[:, 2:8, 4:16, 2:18].long())


def test_labels_stay_in_label_set_after_rotation_and_scaling() -> None:
    config = AugmentConfig(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, rotation_deg=40)
    margin = spatial_margin(config, (8, 16, 16), SPACING)
    crop = tuple(p + 2 * m for p, m in zip((8, 16, 16), margin, strict=True))
    images, labels = _batch(crop)
    x, y = augment_batch(images, labels, config, (8, 16, 16), SPACING, torch.Generator().manual_seed(1))
    assert x.shape == (3, 2, 8, 16, 16) and y.shape == (3, 8, 16, 16) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}
    assert not torch.equal(
        y, labels[(slice(None), *(slice(m, m + p) for m, p in zip(margin, (8, 16, 16), strict=True)))]
    )


def test_mirroring_flips_image_and_label_together() -> None:
    images, labels = _batch()
    config = AugmentConfig(**{**OFF.__dict__, "p_mirror": 1.0, "mirror_axes": (2,)})
    x, y = augment_batch(images, labels, config, (10, 20, 20), SPACING, torch.Generator().manual_seed(0))
    assert torch.equal(x, images.flip(4)) and torch.equal(y, labels.long().flip(3))


def test_rotation_by_90_degrees_about_the_coarse_axis_is_rot90_in_plane() -> None:
    images, labels = _batch((4, 12, 12), b=1)
    angles = torch.tensor([[math.pi / 2, 0.0, 0.0]])
    x, y = warp(images, labels.long(), angles, torch.ones(1), (4, 12, 12), SPACING)
    expected = torch.rot90(images, -1, dims=(3, 4))  # output(y, x) = input(x, -y) for +90 degrees
    assert torch.allclose(x, expected, atol=1e-4)
    assert torch.equal(y, torch.rot90(labels.long(), -1, dims=(2, 3)))


def test_scaling_zooms_about_the_centre() -> None:
    z, yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(16.0), torch.arange(16.0), indexing="ij")
    image = (xx - 7.5)[None, None] * 0.8  # x coordinate in mm from the centre
    x, _ = warp(
        image, torch.zeros(1, 8, 16, 16, dtype=torch.long), torch.zeros(1, 3), torch.tensor([2.0]), (8, 16, 16), SPACING
    )
    assert torch.allclose(x[0, 0, 4, 8, 4:12], image[0, 0, 4, 8, 4:12] / 2, atol=1e-4)


def test_margin_limits_rotation_to_the_coarse_axis_when_anisotropic() -> None:
    config = AugmentConfig(p_rotation=1.0, p_scaling=0.0, rotation_deg=30, rotation_deg_anisotropic=0)
    margin = spatial_margin(config, (8, 32, 32), (3.0, 0.8, 0.8))
    assert margin[0] == 0 and margin[1] > 0 and margin[1] == margin[2]
    assert spatial_margin(OFF, (8, 32, 32), (3.0, 0.8, 0.8)) == (0, 0, 0)
    r = rotation_matrices(torch.rand(5, 3, dtype=torch.float64))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))


def test_reproducible_with_seed_and_intensity_augmentations_change_the_image() -> None:
    config = AugmentConfig(
        p_rotation=0.5, p_scaling=0.5, p_mirror=0.5, p_gamma=1, p_brightness=1, p_contrast=1, p_noise=1, p_blur=1
    )
    margin = spatial_margin(config, (8, 16, 16), SPACING)
    images, labels = _batch(tuple(p + 2 * m for p, m in zip((8, 16, 16), margin, strict=True)), b=4)
    runs = [
        augment_batch(images, labels, config, (8, 16, 16), SPACING, torch.Generator().manual_seed(s)) for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    assert torch.isfinite(runs[0][0]).all()


def test_blur_keeps_a_constant_image_and_gamma_keeps_statistics() -> None:
    images = torch.full((2, 1, 6, 8, 8), 3.0)
    config = AugmentConfig(**{**OFF.__dict__, "p_blur": 1.0})
    x, _ = augment_batch(images, torch.zeros(2, 6, 8, 8), config, (6, 8, 8), SPACING, torch.Generator())
    assert torch.allclose(x, images, atol=1e-5)
    images, labels = _batch((6, 8, 8))
    config = AugmentConfig(**{**OFF.__dict__, "p_gamma": 1.0})
    x, _ = augment_batch(images, labels, config, (6, 8, 8), SPACING, torch.Generator().manual_seed(0))
    assert not torch.allclose(x, images)
    dims = (1, 2, 3, 4)
    assert torch.allclose(x.mean(dims), images.mean(dims), atol=1e-4)
    assert torch.allclose(x.std(dims), images.std(dims), atol=1e-4)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="p_gamma"):
        AugmentConfig(p_gamma=1.5)
    images, labels = _batch((10, 20, 20))
    with pytest.raises(ValueError, match="even margin"):
        augment_batch(images, labels, OFF, (9, 20, 20), SPACING, torch.Generator())
    assert np.isfinite(spatial_margin(AugmentConfig(), (8, 8, 8), (1, 1, 1))).all()


def test_blur_is_isotropic_in_millimetres() -> None:
    image = torch.zeros(1, 1, 9, 15, 15)
    image[0, 0, 4, 7, 7] = 1.0
    config = AugmentConfig(**{**OFF.__dict__, "p_blur": 1.0, "blur_sigma_range": (1.0, 1.0)})
    x, _ = augment_batch(image, torch.zeros(1, 9, 15, 15), config, (9, 15, 15), (3.0, 1.0, 1.0), torch.Generator())
    assert math.isclose(float(x.sum()), 1.0, rel_tol=1e-4)
    assert float(x[0, 0, 4, 8, 7]) == pytest.approx(float(x[0, 0, 4, 7, 8]))  # y and x alike
    assert float(x[0, 0, 5, 7, 7]) < 0.1 * float(x[0, 0, 4, 8, 7])  # 3 mm away along z: far less
