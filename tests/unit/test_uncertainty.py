"""Uncertainty measures: known answers on tiny probability volumes."""

from __future__ import annotations

import numpy as np
import pytest

from carve.imaging.resample import resize_image
from carve.prediction.inference import EnsembleResult
from carve.prediction.uncertainty import (
    case_uncertainty_scores,
    maps_on_grid,
    mutual_information,
    normalised_entropy,
    predictive_entropy,
    scores_on_grid,
    uncertainty_map,
)

SHAPE = (3, 4, 5)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2).copy()


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_uniform_is_one_and_one_hot_is_zero(n_classes) -> None:
    uniform = np.full((n_classes, *SHAPE), 1.0 / n_classes, dtype=np.float32)
    np.testing.assert_allclose(normalised_entropy(uniform), 1.0, atol=1e-6)
    np.testing.assert_allclose(predictive_entropy(uniform), np.log(n_classes), rtol=1e-6)
    labels = np.random.default_rng(0).integers(0, n_classes, SHAPE)
    hot = one_hot(labels, n_classes)
    np.testing.assert_array_equal(normalised_entropy(hot), 0.0)
    assert normalised_entropy(hot).dtype == np.float32 and normalised_entropy(hot).shape == SHAPE


def test_entropy_known_value_and_float16_input() -> None:
    p = np.zeros((2, *SHAPE), dtype=np.float16)
    p[0], p[1] = 0.25, 0.75
    expected = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    np.testing.assert_allclose(predictive_entropy(p), expected, rtol=1e-5)
    np.testing.assert_allclose(normalised_entropy(p), expected / np.log(2), rtol=1e-5)


def test_mutual_information_identical_and_disagreeing_members() -> None:
    member = np.zeros((2, *SHAPE), dtype=np.float32)
    member[0], member[1] = 0.3, 0.7
    own_entropy = predictive_entropy(member)
    np.testing.assert_allclose(mutual_information(member, own_entropy), 0.0, atol=1e-7)
    # two confident members, one says class 0, the other class 1: mean uniform, each entropy 0
    mean = np.full((2, *SHAPE), 0.5, dtype=np.float32)
    np.testing.assert_allclose(mutual_information(mean, np.zeros(SHAPE, np.float32)), np.log(2), rtol=1e-6)
    # rounding cannot make it negative
    assert mutual_information(member, own_entropy + 1e-3).min() == 0.0


def scores_for(labels: np.ndarray, p: np.ndarray, std: np.ndarray | None = None) -> dict[str, float]:
    std = np.zeros_like(p) if std is None else std
    return case_uncertainty_scores(p, np.zeros(SHAPE, np.float32), std, labels)


def test_case_scores_confident_prediction_are_zero() -> None:
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[1, 1:3, 1:4] = 1
    labels[1, 3, 4] = 2
    scores = scores_for(labels, one_hot(labels, 3))
    assert scores["foreground_voxels"] == 7.0
    for key in ("mean_normalised_entropy", "mean_mutual_information", "uncertain_foreground_fraction"):
        assert scores[key] == 0.0
    assert scores["mean_std_label_1"] == 0.0 and scores["mean_std_label_2"] == 0.0


def test_case_scores_known_values() -> None:
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[1, 1:3, 1:3] = 1  # 4 foreground voxels
    p = one_hot(labels, 2)
    p[:, 1, 1, 1] = 0.5  # one uncertain foreground voxel (normalised entropy 1)
    std = np.zeros_like(p)
    std[1][labels == 1] = 0.2
    std[1, 0, 0, 0] = 9.0  # outside the predicted label: ignored
    mean_entropy = np.zeros(SHAPE, np.float32)
    scores = case_uncertainty_scores(p, mean_entropy, std, labels, label_names={1: "liver"})
    # 2x2 square on slice 1, its 8 in-plane face neighbours and the 2x2 squares on slices 0 and 2
    region = 4 + 8 + 4 + 4
    assert scores["mean_normalised_entropy"] == pytest.approx(1.0 / region)
    assert scores["mean_mutual_information"] == pytest.approx(np.log(2) / region)
    assert scores["uncertain_foreground_fraction"] == pytest.approx(0.25)
    assert scores["mean_std_liver"] == pytest.approx(0.2)
    assert scores["mean_std_foreground"] == pytest.approx(0.2)
    # the members were certain (mean entropy 0): all of the entropy is disagreement, none is the members'
    assert scores["mean_member_entropy"] == pytest.approx(0.0, abs=1e-7)
    one_member = case_uncertainty_scores(p, predictive_entropy(p), std, labels)  # its entropy is the ensemble's
    assert one_member["mean_member_entropy"] == pytest.approx(one_member["mean_normalised_entropy"])
    assert one_member["mean_mutual_information"] == pytest.approx(0.0, abs=1e-7)


def test_case_scores_on_empty_prediction_are_defined() -> None:
    labels = np.zeros(SHAPE, dtype=np.int64)
    p = np.full((3, *SHAPE), 1.0 / 3, dtype=np.float32)
    scores = scores_for(labels, p, std=np.full_like(p, 0.1))
    assert scores["foreground_voxels"] == 0.0
    assert set(scores) >= {"mean_std_label_1", "mean_std_label_2", "mean_std_foreground"}
    assert all(np.isfinite(v) and v == 0.0 for v in scores.values())


def test_case_scores_reject_bad_shapes_and_labels() -> None:
    p = np.full((2, *SHAPE), 0.5, dtype=np.float32)
    with pytest.raises(ValueError, match="shapes disagree"):
        scores_for(np.zeros((3, 4, 4), dtype=np.int64), p)
    with pytest.raises(ValueError, match="labels must lie"):
        scores_for(np.full(SHAPE, 2), p)
    with pytest.raises(ValueError, match="n_classes >= 2"):
        normalised_entropy(np.ones((1, *SHAPE)))


def test_uncertainty_map_is_normalised_entropy() -> None:
    p = np.zeros((2, *SHAPE), dtype=np.float32)
    p[0] = np.linspace(0, 1, np.prod(SHAPE)).reshape(SHAPE)
    p[1] = 1 - p[0]
    result = EnsembleResult(p, np.zeros(SHAPE, np.float32), np.zeros_like(p), n_members=2)
    out = uncertainty_map(result)
    assert out.dtype == np.float32 and out.shape == SHAPE
    np.testing.assert_allclose(out, normalised_entropy(p))
    assert out.max() == pytest.approx(1.0, abs=1e-3) and out.min() == 0.0


def random_probabilities(n_classes: int, shape=SHAPE, seed: int = 0, dtype=np.float32) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(n_classes, *shape))
    p = np.exp(logits) / np.exp(logits).sum(0)
    return p.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_maps_on_the_plan_grid_equal_the_direct_computation(dtype) -> None:
    p = random_probabilities(4, dtype=dtype)
    member_entropy = predictive_entropy(p) * 0.5
    maps = maps_on_grid(p, member_entropy)
    assert maps.labels.dtype == np.uint8 and maps.confidence.dtype == np.float32
    np.testing.assert_array_equal(maps.labels, p.astype(np.float32).argmax(0))
    np.testing.assert_allclose(maps.confidence, p.astype(np.float32).max(0), rtol=1e-6)
    np.testing.assert_allclose(maps.normalised_entropy, normalised_entropy(p), atol=1e-6)
    np.testing.assert_allclose(maps.mutual_information, mutual_information(p, member_entropy), atol=1e-6)
    assert p.dtype == dtype and np.isfinite(p).all()  # input untouched


def test_maps_on_another_grid_resize_each_class() -> None:
    p = random_probabilities(3, shape=(4, 5, 6), seed=1)
    shape, spacing = (8, 10, 12), (2.0, 1.0, 1.0)
    calls = []

    def resize(array):
        calls.append(array.shape)
        return resize_image(array, shape, spacing, order=1)

    maps = maps_on_grid(p, np.zeros((4, 5, 6), np.float32), resize)
    assert calls == [(4, 5, 6)] * 4  # three classes and the member entropy, one at a time
    resized = np.stack([resize_image(p[c], shape, spacing, order=1) for c in range(3)])
    np.testing.assert_array_equal(maps.labels, resized.argmax(0))
    np.testing.assert_allclose(maps.confidence, resized.max(0), rtol=1e-6)
    np.testing.assert_allclose(maps.normalised_entropy, normalised_entropy(resized), atol=1e-6)
    # zero member entropy: the mutual information is the whole entropy (nats)
    np.testing.assert_allclose(maps.mutual_information, predictive_entropy(resized), atol=1e-6)


def test_scores_on_grid_equal_the_plan_grid_scores() -> None:
    p = random_probabilities(3, seed=2)
    labels = p.argmax(0)
    member_entropy = predictive_entropy(p) * 0.7
    std = np.random.default_rng(3).uniform(0, 0.3, p.shape).astype(np.float32)
    names = {1: "liver", 2: "vessel"}
    expected = case_uncertainty_scores(p, member_entropy, std, labels, names)
    std_sums = {k: float(std[k][labels == k].sum()) for k in (1, 2)}
    got = scores_on_grid(labels, normalised_entropy(p), mutual_information(p, member_entropy), std_sums, names)
    assert got == pytest.approx(expected)
    assert {"mean_std_liver", "mean_std_vessel"} <= set(got) and got["mean_std_liver"] > 0
    with pytest.raises(ValueError, match="shapes disagree"):
        scores_on_grid(labels[:2], normalised_entropy(p), normalised_entropy(p), std_sums)
