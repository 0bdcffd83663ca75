"""Several datasets, one network: union labels, marginal loss, balanced sampling, regularisers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carve.imaging.labels import (
    DatasetSpec,
    annotated_classes,
    remap_labels,
    restrict_probabilities,
    union_label_names,
    union_values,
)
from carve.planning.topology import NetworkConfig
from carve.training.multidomain import (
    BalancedSampler,
    MultiScaleContrast,
    adjacency_penalty,
    domain_setup,
    forbidden_pairs,
    label_adjacency,
    marginal_dice_ce,
    supervised_contrastive,
)
from carve.training.network import UNet3D, load_model
from carve.training.train import TrainConfig, dice_ce_loss, train_fold

KNEE = DatasetSpec("knee", {1: "femur", 2: "tibia"})
ANKLE = DatasetSpec("ankle", {1: "tibia", 2: "talus"}, "CT")


def test_union_labels_share_names_and_map_each_dataset():
    union = union_label_names([KNEE, ANKLE])
    assert union == {1: "femur", 2: "tibia", 3: "talus"}
    assert union_values(KNEE, union) == {1: 1, 2: 2}
    assert union_values(ANKLE, union) == {1: 2, 2: 3}
    assert annotated_classes(ANKLE, union) == (0, 2, 3)
    labels = np.array([[[0, 1, 2, 2]]], dtype=np.uint8)
    assert remap_labels(labels, union_values(ANKLE, union)).tolist() == [[[0, 2, 3, 3]]]


def test_restrict_probabilities_adds_unannotated_classes_to_background():
    probs = np.array([[0.1, 0.2], [0.5, 0.1], [0.4, 0.7]])  # (K=3, 2 voxels)
    out = restrict_probabilities(probs.copy(), (0, 2))
    np.testing.assert_allclose(out, [[0.6, 0.3], [0.0, 0.0], [0.4, 0.7]])
    np.testing.assert_allclose(out.sum(0), 1.0)


def test_marginal_loss_equals_plain_loss_when_every_class_is_annotated():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, 6, 6, generator=g)
    target = F.one_hot(torch.randint(0, 4, (3, 6, 6, 6), generator=g), 4).permute(0, 4, 1, 2, 3).float()
    full = torch.ones(3, 4, dtype=torch.bool)
    assert torch.allclose(marginal_dice_ce(logits, target, full), dice_ce_loss(logits, target), atol=1e-6)


def test_marginal_loss_does_not_punish_an_unannotated_class():
    """A sample whose dataset does not annotate class 2: predicting 2 where the target says background costs
    nothing more than predicting background; with class 2 annotated it costs a lot."""
    target = torch.zeros(1, 3, 4, 4, 4)
    target[:, 0] = 1
    says_2 = torch.full((1, 3, 4, 4, 4), -5.0)
    says_2[:, 2] = 5.0
    says_0 = torch.full((1, 3, 4, 4, 4), -5.0)
    says_0[:, 0] = 5.0
    partial = torch.tensor([[True, True, False]])
    full = torch.ones(1, 3, dtype=torch.bool)
    assert marginal_dice_ce(says_2, target, partial) == pytest.approx(float(marginal_dice_ce(says_0, target, partial)))
    assert marginal_dice_ce(says_2, target, full) > marginal_dice_ce(says_0, target, full) + 5


def test_adjacency_and_forbidden_pairs():
    lab = np.zeros((1, 8, 8), dtype=np.uint8)
    lab[0, 1:3, 1:3] = 1
    lab[0, 5:7, 5:7] = 2  # never touches 1
    lab[0, 3, 1:3] = 3  # touches 1
    touch = label_adjacency([lab], 4)
    assert touch[1, 3] and touch[3, 1] and not touch[1, 2] and touch[0, 2]
    assert forbidden_pairs([[lab]], [(0, 1, 2, 3)], 4) == ((1, 2), (2, 3))
    # a pair that touches in another dataset's labels is allowed
    other = np.zeros((1, 4, 4), dtype=np.uint8)
    other[0, 0, 0], other[0, 0, 1] = 1, 2
    assert forbidden_pairs([[lab], [other]], [(0, 1, 2, 3), (0, 1, 2)], 4) == ((2, 3),)


def test_adjacency_penalty_is_high_where_forbidden_classes_meet():
    apart = torch.full((1, 3, 1, 8, 8), -9.0)
    apart[0, 0] = 9.0
    apart[0, 1, 0, 0:2, 0:2] = 20.0
    apart[0, 2, 0, 6:8, 6:8] = 20.0
    touching = apart.clone()
    touching[0, 2, 0, 2:4, 0:2] = 20.0  # class 2 right next to class 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert float(adjacency_penalty(apart, [(1, 2)], mask)) < 1e-6
    assert float(adjacency_penalty(touching, [(1, 2)], mask)) > 0.01
    assert float(adjacency_penalty(touching, [(1, 2)], torch.tensor([[True, True, False]]))) == 0.0


def test_supervised_contrastive_prefers_clusters_by_group():
    groups = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supervised_contrastive(clustered, groups, 0.1) < supervised_contrastive(mixed, groups, 0.1)
    assert float(supervised_contrastive(clustered, torch.tensor([0, 1, 2, 3]), 0.1)) == 0.0  # no positives


def test_multiscale_contrast_hooks_the_encoder():
    net = UNet3D(NetworkConfig(1, 3, 4, 16, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), ((3, 3, 3),) * 3))
    contrast = MultiScaleContrast(net.config.channels, scales=2)
    contrast.attach(net.encoder)
    net(torch.randn(4, 1, 8, 8, 8))
    loss = contrast.loss(torch.tensor([0, 0, 1, 1]), 0.1)
    loss.backward()
    assert torch.isfinite(loss) and contrast.stages == [1, 2]
    assert net.encoder[2].conv1.weight.grad is not None  # the regulariser reaches the shared encoder


def _cases(n, value, rng):
    """Boxes of class ``value``: bright in dataset 1, dark in dataset 2 (two domains)."""
    out = []
    for _ in range(n):
        img = rng.normal(size=(1, 12, 16, 16)).astype(np.float32)
        lab = np.zeros((12, 16, 16), dtype=np.uint8)
        lab[4:8, 5:11, 5:11] = value
        img[0][lab > 0] += 3 if value == 1 else -3
        out.append((img, lab))
    return out


def test_balanced_sampler_draws_both_datasets_reproducibly():
    rng = np.random.default_rng(0)
    cases = _cases(6, 1, rng) + _cases(1, 2, rng)  # six of one dataset, one of the other
    datasets = [0] * 6 + [1]
    sampler = BalancedSampler(cases, datasets, (8, 8, 8), 3, 0.5, np.random.default_rng(3))
    state = sampler.state()
    picks = []
    for _ in range(50):
        _, labels = sampler.sample(4)
        picks += sampler.last_datasets.tolist()
        for lab, d in zip(labels, sampler.last_datasets, strict=True):
            assert set(np.unique(lab)) <= {0, 1 + d}
    assert 0.35 < np.mean(picks) < 0.65  # balanced although dataset 1 has one case of seven
    sampler.set_state(state)
    again = []
    for _ in range(50):
        sampler.sample(4)
        again += sampler.last_datasets.tolist()
    assert again == picks


def test_train_fold_with_two_datasets_learns_both_and_resumes_exactly(tmp_path, monkeypatch):
    """Two datasets annotating different classes: the shared model learns both; with both regularisers on,
    a run interrupted after its first checkpoint resumes to the same weights."""
    rng = np.random.default_rng(1)
    cases = _cases(3, 1, rng) + _cases(3, 2, rng)
    names = ["a"] * 3 + ["b"] * 3
    classes = {"a": (0, 1), "b": (0, 2)}
    setup = domain_setup(["a", "b"], classes, cases, names, ["a", "b"], 3)
    assert setup.annotated.tolist() == [[True, True, False], [True, False, True]]
    net = NetworkConfig(1, 3, 8, 32, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), ((3, 3, 3),) * 3)
    config = TrainConfig(
        epochs=4,
        time_budget_min=None,
        iterations_per_epoch=10,
        batch_size=4,
        patch_size=(8, 16, 16),
        contrastive_weight=0.1,
        adjacency_weight=0.1,
        checkpoint_every_min=0.0,
        network=net,
    )
    val = [cases[0], cases[3]]
    path = train_fold(cases, val, config, tmp_path / "full", domains=setup)
    from carve.training.network import load_model

    model, extra = load_model(path)
    assert len(extra["val_dice"]) == 2 and min(extra["val_dice"]) > 0.5
    # killed after the checkpoint of epoch 2 (in the curves writer of epoch 3), then rerun
    import carve.training.train as train_mod

    real, calls = train_mod._write_curves, {"n": 0}

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_write_curves", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cases, val, config, tmp_path / "cut", domains=setup)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["iteration"] == 20
    monkeypatch.setattr(train_mod, "_write_curves", real)
    resumed, _ = load_model(train_fold(cases, val, config, tmp_path / "cut", domains=setup))
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_domain_setup_refuses_an_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        domain_setup(["a"], {"a": (0, 1)}, _cases(1, 1, np.random.default_rng(0)), ["x"], [], 2)


def test_contrastive_regulariser_changes_training_at_batch_size_two(tmp_path):
    """At batch 2 one embedding per sample would make the loss identically zero (one other sample: the positive
    or nothing); the octant embeddings give positives and negatives, so the weights change."""
    rng = np.random.default_rng(1)
    cases = _cases(2, 1, rng) + _cases(2, 2, rng)
    setup = domain_setup(["a", "b"], {"a": (0, 1), "b": (0, 2)}, cases, ["a", "a", "b", "b"], [], 3)
    net = NetworkConfig(1, 3, 8, 32, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), ((3, 3, 3),) * 3)
    weights = []
    for w in (0.0, 1.0):
        config = TrainConfig(
            epochs=1, time_budget_min=None, iterations_per_epoch=6, batch_size=2, patch_size=(8, 16, 16),
            contrastive_weight=w, network=net,
        )  # fmt: skip
        model, _ = load_model(train_fold(cases, [], config, tmp_path / f"w{w}", domains=setup))
        weights.append(model.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values(), strict=True))
