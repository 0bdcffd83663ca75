"""carve.training.sampling: foreground oversampling, padding of small volumes, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from carve.training.sampling import PatchSampler, crop, index_case


def _case(shape=(16, 24, 24), centre=(3, 4, 4), radius=2.5, channels=1, label_value=1):
    grid = np.indices(shape)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    label = np.where(dist <= radius, label_value, 0).astype(np.uint8)
    image = np.random.default_rng(1).normal(size=(channels, *shape)).astype(np.float32) + 2 * label
    return image, label


def test_foreground_fraction_one_always_contains_foreground() -> None:
    cases = [_case(), _case(centre=(12, 20, 19), label_value=2)]
    sampler = PatchSampler(cases, (8, 8, 8), n_classes=3, foreground_fraction=1.0, rng=np.random.default_rng(0))
    for _ in range(20):
        images, labels = sampler.sample(3)
        assert images.shape == (3, 1, 8, 8, 8) and images.dtype == np.float32
        assert labels.shape == (3, 8, 8, 8) and labels.dtype == np.uint8
        assert all((lab > 0).any() for lab in labels)


def test_foreground_fraction_zero_is_uniform() -> None:
    sampler = PatchSampler([_case()], (8, 8, 8), 2, foreground_fraction=0.0, rng=np.random.default_rng(0))
    hits = sum(int((lab > 0).any()) for _ in range(30) for lab in sampler.sample(2)[1])
    assert hits < 30  # a small sphere in a corner is mostly missed by uniform patches


def test_every_present_class_is_sampled() -> None:
    image, label = _case(centre=(4, 5, 5))
    label[12:15, 18:21, 18:21] = 2  # a second class far away
    sampler = PatchSampler([(image, label)], (6, 6, 6), 3, foreground_fraction=1.0, rng=np.random.default_rng(2))
    seen = {int(v) for _ in range(20) for v in np.unique(sampler.sample(2)[1])}
    assert {1, 2} <= seen


def test_patch_larger_than_volume_is_padded() -> None:
    image, label = _case(shape=(6, 10, 12), centre=(3, 5, 6))
    sampler = PatchSampler([(image, label)], (8, 16, 16), 2, foreground_fraction=0.5, rng=np.random.default_rng(0))
    images, labels = sampler.sample(4)
    assert images.shape == (4, 1, 8, 16, 16) and labels.shape == (4, 8, 16, 16)
    for img, lab in zip(images, labels, strict=True):
        assert lab.sum() == label.sum()  # the whole volume is inside the patch
        assert np.isclose(img.min(), image.min())  # padding uses the channel minimum
        assert (img == image.min()).sum() >= 8 * 16 * 16 - image[0].size


def test_crop_known_answer_with_padding() -> None:
    image = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4)
    label = (image[0] % 3).astype(np.uint8)
    img, lab = crop(image, label, (-1, 2, 0), (3, 3, 2), np.array([-5.0, -7.0], dtype=np.float32))
    assert img.shape == (2, 3, 3, 2)
    assert (img[0, 0] == -5).all() and (img[1, 0] == -7).all() and (lab[0] == 0).all()
    assert (img[:, 1:, :2] == image[:, 0:2, 2:4, 0:2]).all()
    assert (img[:, 1:, 2] == np.array([-5.0, -7.0])[:, None, None]).all()
    assert (lab[1:, :2] == label[0:2, 2:4, 0:2]).all()


def test_reproducible_with_seed() -> None:
    cases = [_case(), _case(centre=(10, 10, 10))]

    def draw(seed):
        sampler = PatchSampler(cases, (8, 12, 8), 2, 0.5, rng=np.random.default_rng(seed))
        return [sampler.sample(3) for _ in range(4)]

    a, b, c = draw(7), draw(7), draw(8)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_state_round_trip_continues_the_stream() -> None:
    sampler = PatchSampler([_case()], (8, 8, 8), 2, 0.5, rng=np.random.default_rng(0))
    sampler.sample(2)
    state = sampler.state()
    expected = sampler.sample(2)
    sampler.sample(5)
    sampler.set_state(state)
    got = sampler.sample(2)
    assert np.array_equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])


def test_index_case_subsamples_and_validates() -> None:
    image, label = _case(shape=(40, 40, 40), centre=(20, 20, 20), radius=19)
    index = index_case(image, label, 2, np.random.default_rng(0))
    assert (label > 0).sum() > 20_000 and len(index.locations[1]) == 20_000
    assert (label[tuple(index.locations[1].T)] == 1).all()
    with pytest.raises(ValueError, match="case 3"):
        index_case(image[0], label, 2, np.random.default_rng(0), name="case 3")
    with pytest.raises(ValueError, match="foreground_fraction"):
        PatchSampler([(image, label)], (8, 8, 8), 2, foreground_fraction=1.5)
