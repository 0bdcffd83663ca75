"""carve.training.semi_supervised: pseudo-labels and their weights, the weighted cross-entropy, the mean teacher's
EMA, ramp-up and consistency, the no-leakage rule of self-training, and the options' validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from carve.errors import InputError
from carve.training.network import NetworkConfig, UNet3D
from carve.training.semi_supervised import (
    LABELLED,
    SemiSupervisedOptions,
    StudentCase,
    consistency_loss,
    consistency_rampup,
    copy_paste_mix,
    ema_update_,
    pseudo_labels,
    student_training_inputs,
    weighted_cross_entropy,
)

torch.set_num_threads(1)

MASK = SemiSupervisedOptions(method="self_training")  # mask weighting at 0.9
CONFIDENCE = SemiSupervisedOptions(method="self_training", weighting="confidence")


def _voxels(*rows: list[float]) -> np.ndarray:
    """(n_classes, 1, 1, n_voxels) float32 probabilities, one row per voxel."""
    return np.asarray(rows, dtype=np.float32).T.reshape(len(rows[0]), 1, 1, len(rows))


# ---- pseudo-labels -------------------------------------------------------------------------------------------------


def test_mask_weighting_keeps_voxels_at_or_above_the_threshold() -> None:
    p = _voxels([0.95, 0.03, 0.02], [0.6, 0.3, 0.1], [0.05, 0.9, 0.05], [0.1, 0.2, 0.7])
    labels, weights = pseudo_labels(p, MASK)
    assert labels.dtype == np.uint8 and weights.dtype == np.float32 and labels.shape == weights.shape == (1, 1, 4)
    assert labels.ravel().tolist() == [0, 0, 1, 2]
    assert weights.ravel().tolist() == [1.0, 0.0, 1.0, 0.0]  # 0.95 kept, 0.6 dropped, exactly 0.9 kept, 0.7 dropped
    t_labels, t_weights = pseudo_labels(torch.from_numpy(p), MASK)
    assert t_labels.dtype == torch.long and t_weights.dtype == torch.float32
    assert t_labels.flatten().tolist() == [0, 0, 1, 2] and t_weights.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    _, lenient = pseudo_labels(p, SemiSupervisedOptions(method="self_training", confidence_threshold=0.5))
    assert lenient.ravel().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_confidence_weighting_rescales_the_maximum_probability() -> None:
    p = _voxels([0.25] * 4, [0.0, 0.0, 1.0, 0.0], [0.625, 0.125, 0.125, 0.125], [0.1, 0.6, 0.2, 0.1])
    for probabilities in (p, torch.from_numpy(p)):
        labels, weights = pseudo_labels(probabilities, CONFIDENCE)
        w = np.asarray(weights).ravel()
        assert np.asarray(labels).ravel().tolist() == [0, 2, 0, 1]  # a tie (uniform) goes to the lowest class
        assert w[0] == 0.0 and w[1] == 1.0  # uniform -> 0, one-hot -> 1
        assert w[2] == pytest.approx(0.5)  # (0.625 - 1/4) / (1 - 1/4)
        assert w[3] == pytest.approx((0.6 - 0.25) / 0.75)  # below the threshold, yet weighted: no threshold here
    _, uniform3 = pseudo_labels(np.full((3, 2, 2, 2), 1 / 3, dtype=np.float32), CONFIDENCE)
    assert np.allclose(uniform3, 0.0, atol=1e-6)


def test_probabilities_that_are_not_a_distribution_are_refused() -> None:
    good = _voxels([0.5, 0.5], [0.2, 0.8])
    pseudo_labels(good * np.float32(1.0005), MASK)  # within the tolerance
    for bad in (good * np.float32(1.01), good * np.float32(0.99), np.where(good == 0.2, np.nan, good)):
        with pytest.raises(ValueError, match="sum to 1"):
            pseudo_labels(bad, MASK)
        with pytest.raises(ValueError, match="sum to 1"):
            pseudo_labels(torch.from_numpy(np.ascontiguousarray(bad)), CONFIDENCE)
    with pytest.raises(ValueError, match="non-negative"):
        pseudo_labels(_voxels([1.5, -0.5]), MASK)  # sums to 1, but not probabilities
    with pytest.raises(ValueError, match="n_classes"):
        pseudo_labels(np.ones((1, 2, 2, 2), dtype=np.float32), MASK)
    with pytest.raises(ValueError, match="n_classes"):
        pseudo_labels(np.full((2, 2, 2), 0.5, dtype=np.float32), MASK)


# ---- weighted cross-entropy ----------------------------------------------------------------------------------------


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 2, 3, 4, generator=g), torch.randint(0, 3, (2, 2, 3, 4), generator=g)


def test_weighted_cross_entropy_with_unit_weights_is_the_plain_one() -> None:
    logits, labels = _batch()
    loss = weighted_cross_entropy(logits, labels, torch.ones(labels.shape))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # uint8 labels (pseudo_labels' numpy output) are taken too
    assert weighted_cross_entropy(logits, labels.to(torch.uint8), torch.ones(labels.shape)).item() == loss.item()


def test_weighted_cross_entropy_ignores_zero_weight_voxels() -> None:
    logits, labels = _batch(1)
    weights = torch.zeros(labels.shape)
    weights[0, 0, 0, :2] = 1.0
    weights[1, 1, 2, 3] = 3.0
    loss = weighted_cross_entropy(logits, labels, weights)
    per_voxel = F.cross_entropy(logits, labels, reduction="none")
    expected = (per_voxel[0, 0, 0, 0] + per_voxel[0, 0, 0, 1] + 3 * per_voxel[1, 1, 2, 3]) / 5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    relabelled = torch.where(weights > 0, labels, (labels + 1) % 3)
    assert not torch.equal(relabelled, labels)
    assert weighted_cross_entropy(logits, relabelled, weights).item() == loss.item()
    broken = logits.masked_fill((weights == 0)[:, None], math.nan)  # even NaN logits count for nothing there
    assert weighted_cross_entropy(broken, relabelled, weights).item() == loss.item()


def test_weighted_cross_entropy_without_weight_is_zero_not_nan() -> None:
    logits, labels = _batch(2)
    logits.requires_grad_(True)
    loss = weighted_cross_entropy(logits, labels, torch.zeros(labels.shape))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and not logits.grad.any()
    with pytest.raises(ValueError, match="non-negative"):
        weighted_cross_entropy(logits, labels, -torch.ones(labels.shape))
    with pytest.raises(ValueError, match="do not match"):
        weighted_cross_entropy(logits[:, :, :1], labels, torch.ones(labels.shape))


# ---- mean teacher: EMA, ramp-up, consistency ------------------------------------------------------------------------


def _net(seed: int, channels: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv3d(1, channels, 1), nn.BatchNorm3d(channels))
    model.train()(torch.randn(2, 1, 2, 2, 2) * (seed + 1))  # moves the running statistics apart
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ema_decay_zero_copies_one_keeps_half_averages() -> None:
    student = _net(1)
    s = _state(student)
    for decay in (0.0, 1.0, 0.5):
        teacher = _net(0)
        t = _state(teacher)
        assert not torch.equal(t["0.weight"], s["0.weight"]) and not torch.equal(
            t["1.running_mean"], s["1.running_mean"]
        )
        ema_update_(teacher, student, decay)
        after = _state(teacher)
        for name, _ in teacher.named_parameters():
            assert torch.allclose(after[name], decay * t[name] + (1 - decay) * s[name], atol=1e-7), (decay, name)
        if decay == 0.0:
            assert all(torch.equal(after[k], s[k]) for k in s)
        if decay == 1.0:
            assert all(torch.equal(after[n], t[n]) for n, _ in teacher.named_parameters())
        for name, _ in teacher.named_buffers():  # running statistics and counters: the student's, whatever the decay
            assert torch.equal(after[name], s[name]), (decay, name)
        assert all(torch.equal(v, s[k]) for k, v in _state(student).items())  # the student is left alone


def test_ema_works_on_the_unet_and_refuses_other_networks() -> None:
    config = NetworkConfig(in_channels=1, n_classes=2, base_channels=4, max_channels=8,
                           strides=((1, 1, 1), (2, 2, 2)), kernel_sizes=((3, 3, 3), (3, 3, 3)))  # fmt: skip
    torch.manual_seed(0)
    teacher, student = UNet3D(config), UNet3D(config)
    ema_update_(teacher, student, 0.0)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in teacher.state_dict().items())
    wider = UNet3D(NetworkConfig(**{**config.to_dict(), "base_channels": 8, "max_channels": 16}))
    with pytest.raises(ValueError, match="differ in parameters"):
        ema_update_(teacher, wider, 0.5)
    with pytest.raises(ValueError, match="differ in parameters"):
        ema_update_(_net(0), nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Conv3d(2, 2, 1)), 0.5)
    with pytest.raises(ValueError, match="differ in buffers"):
        ema_update_(_net(0), nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2, track_running_stats=False)), 0.5)
    for decay in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="decay"):
            ema_update_(_net(0), _net(1), decay)


def test_consistency_rampup_is_the_sigmoid_ramp() -> None:
    assert consistency_rampup(0.0, 0.4) == pytest.approx(math.exp(-5))
    assert consistency_rampup(0.2, 0.4) == pytest.approx(math.exp(-1.25))  # halfway: exp(-5 * 0.5^2)
    assert consistency_rampup(0.4, 0.4) == 1.0 and consistency_rampup(0.7, 0.4) == 1.0
    assert consistency_rampup(1.0, 0.4) == 1.0
    values = [consistency_rampup(p, 0.4) for p in np.linspace(0, 1, 41)]
    assert np.all(np.diff(values) >= 0) and values[0] < values[5] < values[10]
    assert consistency_rampup(0.0, 0.0) == 1.0 and consistency_rampup(0.5, 0.0) == 1.0
    with pytest.raises(ValueError, match="rampup_fraction"):
        consistency_rampup(0.1, -0.1)


def test_consistency_loss_is_the_mean_squared_softmax_difference() -> None:
    logits, _ = _batch(3)
    assert consistency_loss(logits, torch.softmax(logits, 1)).item() == pytest.approx(0.0, abs=1e-12)
    other, _ = _batch(4)
    assert consistency_loss(logits, torch.softmax(other, 1)).item() > 1e-3
    # known value: the student says (0.5, 0.5), the teacher (1, 0): (0.25 + 0.25) / 2 classes
    zeros = torch.zeros(1, 2, 1, 1, 2)
    teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 2)
    assert consistency_loss(zeros, teacher).item() == pytest.approx(0.25)


def test_consistency_loss_mask_selects_voxels_and_no_gradient_reaches_the_teacher() -> None:
    student = torch.zeros(1, 2, 1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[0.5, 1.0], [0.5, 0.0]]).view(1, 2, 1, 1, 2).requires_grad_(True)  # voxel 0 agrees
    assert consistency_loss(student, teacher).item() == pytest.approx(0.125)  # (0 + 0.25) / 2 voxels
    agree = torch.tensor([True, False]).view(1, 1, 1, 2)
    assert consistency_loss(student, teacher, agree).item() == 0.0
    assert consistency_loss(student, teacher, ~agree).item() == pytest.approx(0.25)
    nothing = consistency_loss(student, teacher, torch.zeros(1, 1, 1, 2))
    assert nothing.item() == 0.0 and not torch.isnan(nothing)
    loss = consistency_loss(student, teacher, ~agree)
    loss.backward()
    assert teacher.grad is None and student.grad is not None and student.grad[..., 1].abs().sum() > 0
    assert not student.grad[..., 0].any()  # the masked voxel gives no gradient
    with pytest.raises(ValueError, match="mask"):
        consistency_loss(student, teacher, torch.ones(1, 2, 1, 1, 2))
    with pytest.raises(ValueError, match="same"):
        consistency_loss(student, teacher[:, :, :, :, :1])


# ---- the no-leakage rule of self-training -------------------------------------------------------------------------

PSEUDO = {
    0: {"u2": "teacher0/u2.nii.gz", "u1": "teacher0/u1.nii.gz"},
    1: {"u2": "teacher1/u2.nii.gz", "u1": "teacher1/u1.nii.gz"},
}


def test_student_fold_reads_its_own_teachers_pseudo_labels_only() -> None:
    inputs = student_training_inputs(1, ["b", "a"], PSEUDO)
    assert inputs == [
        StudentCase("b", LABELLED),
        StudentCase("a", LABELLED),
        StudentCase("u1", Path("teacher1/u1.nii.gz")),
        StudentCase("u2", Path("teacher1/u2.nii.gz")),
    ]
    assert not any(isinstance(s, Path) and s.parts[0] == "teacher0" for _, s in inputs)  # never fold 0's teacher
    fold0 = student_training_inputs(0, ["c"], PSEUDO)
    assert {s for _, s in fold0 if s != LABELLED} == {Path("teacher0/u1.nii.gz"), Path("teacher0/u2.nii.gz")}


def test_missing_teacher_fold_and_labelled_pseudo_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="teacher fold 2 has no pseudo-labels"):
        student_training_inputs(2, ["a"], PSEUDO)
    with pytest.raises(ValueError, match="teacher fold 1 has no pseudo-labels"):
        student_training_inputs(1, ["a"], {0: PSEUDO[0], 1: {}})
    with pytest.raises(ValueError, match=r"both labelled and pseudo-labelled .*\['u1'\]"):
        student_training_inputs(1, ["a", "u1"], PSEUDO)
    with pytest.raises(ValueError, match=r"teacher fold 0\): \['x'\]"):  # another teacher's overlap is refused too
        student_training_inputs(1, ["a"], {0: {"x": "t0/x.nii.gz"}, 1: PSEUDO[1]}, run_labelled_cases=["x"])
    with pytest.raises(ValueError, match=r"\['u2'\]"):  # a validation or test case of the run, pseudo-labelled
        student_training_inputs(1, ["a"], PSEUDO, run_labelled_cases=["a", "u2", "v"])
    with pytest.raises(ValueError, match="repeat"):
        student_training_inputs(1, ["a", "a"], PSEUDO)


# ---- options --------------------------------------------------------------------------------------------------------


def test_options_defaults_and_a_full_block() -> None:
    assert SemiSupervisedOptions.from_config(None) == SemiSupervisedOptions.from_config({}) == SemiSupervisedOptions()
    default = SemiSupervisedOptions()
    assert (default.method, default.confidence_threshold, default.weighting, default.rounds) == ("none", 0.9, "mask", 1)
    assert (default.ema_decay, default.consistency_weight, default.rampup_fraction) == (0.99, 1.0, 0.4)
    assert default.unlabelled_per_batch == 2 and not default.enabled
    block = {"method": "mean_teacher", "ema_decay": 0.999, "consistency_weight": 10, "rampup_fraction": 0,
             "unlabelled_per_batch": 4, "weighting": "confidence", "confidence_threshold": 1, "rounds": 3}  # fmt: skip
    options = SemiSupervisedOptions.from_config(block)
    assert options.enabled and options.consistency_weight == 10.0 and isinstance(options.consistency_weight, float)
    assert options.rampup_fraction == 0.0 and options.rounds == 3 and options.unlabelled_per_batch == 4


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"method": "fixmatch"},
            r"semi_supervised\.method: 'fixmatch' is not one of none, self_training, mean_teacher",
        ),
        ({"weighting": "soft"}, r"semi_supervised\.weighting: 'soft' is not one of mask, confidence"),
        ({"confidence_threshold": 1.5}, r"semi_supervised\.confidence_threshold: 1\.5 is not a number in \[0, 1\]"),
        ({"confidence_threshold": "high"}, r"semi_supervised\.confidence_threshold: 'high'"),
        ({"ema_decay": 1.0}, r"semi_supervised\.ema_decay: 1\.0 is not a number in \[0, 1\)"),
        ({"ema_decay": True}, r"semi_supervised\.ema_decay: True"),
        ({"consistency_weight": -1}, r"semi_supervised\.consistency_weight: -1 is not a number in >= 0"),
        ({"rampup_fraction": math.nan}, r"semi_supervised\.rampup_fraction: nan"),
        ({"rounds": 0}, r"semi_supervised\.rounds: 0 is not a whole number >= 1"),
        ({"rounds": 1.5}, r"semi_supervised\.rounds: 1\.5"),
        ({"unlabelled_per_batch": False}, r"semi_supervised\.unlabelled_per_batch: False"),
        ({"method": "mean_teacher", "copy_paste": 1}, r"semi_supervised\.copy_paste: 1 is not true or false"),
        ({"method": "self_training", "copy_paste": True}, r"semi_supervised\.copy_paste: .*method is 'self_training'"),
        ({"copy_paste_fraction": 1.2}, r"semi_supervised\.copy_paste_fraction: 1\.2 is not a number in \[0, 1\]"),
        (
            {"ema_decy": 0.9},
            r"semi_supervised\.ema_decy: unknown option; the options are method, use_test_images, confidence_threshold",
        ),
    ],
)
def test_options_errors_name_the_key_and_what_is_allowed(block: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        SemiSupervisedOptions.from_config(block)


def test_options_block_must_be_a_mapping() -> None:
    with pytest.raises(InputError, match="semi_supervised: must be a mapping"):
        SemiSupervisedOptions.from_config(["self_training"])  # type: ignore[arg-type]


# ---- self-training's masked pseudo-labels and the loss that ignores them ------------------------------------------
def test_masked_pseudo_labels_hold_the_ignore_value_below_the_threshold() -> None:
    from carve.training.semi_supervised import IGNORE_LABEL, masked_pseudo_labels

    p = _voxels([0.95, 0.05], [0.2, 0.8], [0.5, 0.5], [0.1, 0.9])
    labels, kept = masked_pseudo_labels(p, SemiSupervisedOptions(method="self_training", confidence_threshold=0.85))
    assert labels.dtype == np.uint8 and labels.ravel().tolist() == [0, IGNORE_LABEL, IGNORE_LABEL, 1]
    assert kept == pytest.approx(0.5)
    everything, kept_all = masked_pseudo_labels(p, SemiSupervisedOptions(confidence_threshold=0.0))
    assert everything.ravel().tolist() == [0, 1, 0, 1] and kept_all == 1.0
    # confidence weighting is a mask here (a student's loss takes masks): the threshold still decides
    labels_c, _ = masked_pseudo_labels(p, SemiSupervisedOptions(weighting="confidence", confidence_threshold=0.85))
    np.testing.assert_array_equal(labels_c, labels)


def test_the_loss_ignores_masked_voxels_and_equals_the_plain_loss_without_them() -> None:
    from carve.training.semi_supervised import IGNORE_LABEL
    from carve.training.train import deep_supervision_loss, dice_ce_loss, masked_dice_ce_loss

    gen = torch.Generator().manual_seed(0)
    strides = ((1, 1, 1), (2, 2, 2))
    outputs = [torch.randn(2, 3, 4, 8, 8, generator=gen), torch.randn(2, 3, 2, 4, 4, generator=gen)]
    labels = torch.randint(0, 3, (2, 4, 8, 8), generator=gen)
    target = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    ones = torch.ones(2, 1, 4, 8, 8)
    assert float(masked_dice_ce_loss(outputs[0], target, ones)) == pytest.approx(
        float(dice_ce_loss(outputs[0], target))
    )
    masked = labels.clone()
    masked[:, :2] = IGNORE_LABEL  # the first two slices: the teacher was unsure there
    base = deep_supervision_loss(outputs, masked, 3, strides)
    changed = [o.clone() for o in outputs]
    changed[0][:, :, :2] = 50 * torch.randn(2, 3, 2, 8, 8, generator=gen)  # anything at the ignored voxels
    assert float(deep_supervision_loss(changed, masked, 3, strides)) == pytest.approx(float(base), rel=1e-6)
    changed[0][:, :, 2:] += 1.0 * torch.randn(2, 3, 2, 8, 8, generator=gen)  # but the kept voxels count
    assert float(deep_supervision_loss(changed, masked, 3, strides)) != pytest.approx(float(base), rel=1e-3)
    # no masked voxel: the plain loss, to the byte
    plain = deep_supervision_loss(outputs, labels, 3, strides)
    assert torch.equal(plain, deep_supervision_loss(outputs, labels.clone(), 3, strides))
    with pytest.raises(ValueError, match="several datasets"):
        deep_supervision_loss(outputs, masked, 3, strides, annotated=torch.ones(2, 3, dtype=torch.bool))


def test_a_student_batch_mixes_labelled_and_pseudo_labelled_patches_in_the_set_share() -> None:
    from carve.training.sampling import PatchSampler
    from carve.training.train import mixed_batch

    labelled = [(np.zeros((1, 6, 6, 6), np.float32), np.zeros((6, 6, 6), np.uint8))]
    pseudo = [(np.ones((1, 6, 6, 6), np.float32), np.full((6, 6, 6), 255, np.uint8))]
    a = PatchSampler(labelled, (4, 4, 4), 2, 0.0, np.random.default_rng(0))
    b = PatchSampler(pseudo, (4, 4, 4), 2, 0.0, np.random.default_rng(1))
    images, labels = mixed_batch(a, b, 4, 0.5)
    assert images.shape == (4, 1, 4, 4, 4) and images[:, 0, 0, 0, 0].tolist() == [0, 0, 1, 1]
    assert labels[2:].min() == 255 and labels[:2].max() == 0
    counts = [int(mixed_batch(a, b, 3, 0.5)[0][:, 0, 0, 0, 0].sum()) for _ in range(400)]
    assert set(counts) == {1, 2} and np.mean(counts) == pytest.approx(1.5, abs=0.1)  # random rounding: exact mean
    assert mixed_batch(a, b, 2, 1.0)[0][:, 0, 0, 0, 0].tolist() == [1, 1]
    assert mixed_batch(a, b, 2, 0.0)[0][:, 0, 0, 0, 0].tolist() == [0, 0]


def test_the_noisy_students_augmentation_doubles_each_probability_but_mirroring() -> None:
    from carve.training.augment import AugmentConfig, stronger

    base = AugmentConfig(p_rotation=0.2, p_gamma=0.6, p_mirror=0.5, mirror_axes=(2,))
    strong = stronger(base)
    assert strong.p_rotation == pytest.approx(0.4) and strong.p_gamma == 1.0 and strong.p_mirror == 0.5
    assert strong.mirror_axes == (2,) and strong.rotation_deg == base.rotation_deg


def test_a_student_starts_from_scratch_or_its_teacher_and_nothing_else() -> None:
    assert SemiSupervisedOptions().student_init == "scratch"
    assert SemiSupervisedOptions.from_config({"student_init": "teacher"}).student_init == "teacher"
    with pytest.raises(InputError, match=r"semi_supervised.student_init: 'ema' is not one of scratch, teacher"):
        SemiSupervisedOptions.from_config({"student_init": "ema"})


def test_copy_paste_mix_pastes_a_box_each_way_with_its_targets() -> None:
    spatial = (4, 6, 5)
    images = torch.full((2, 1, *spatial), 1.0)
    images[1] = 2.0
    labels = torch.ones((2, *spatial), dtype=torch.long)
    labels[1] = 2
    unlabelled = -torch.arange(1.0, 4.0)[:, None, None, None, None].expand(3, 1, *spatial).clone()  # -1, -2, -3
    pseudo = torch.zeros((3, *spatial), dtype=torch.long)
    pseudo[2] = 3
    mixed, target = copy_paste_mix(images, labels, unlabelled, pseudo, 0.5, torch.Generator().manual_seed(0))
    assert mixed.shape == (3, 1, *spatial) and target.shape == (3, *spatial) and target.dtype == torch.long
    box_voxels = 2 * 3 * 2  # round(0.5 x side) per axis (3 x 0.5 = 2.5 rounds to 2)
    for j, (inner, outer, inner_label, outer_label) in enumerate(
        [(1.0, -1.0, 1, 0), (-2.0, 2.0, 0, 2), (1.0, -3.0, 1, 3)]  # j -> labelled j mod 2; odd j: the other way
    ):
        inside = mixed[j, 0] == inner
        assert int(inside.sum()) == box_voxels and int((mixed[j, 0] == outer).sum()) == inside.numel() - box_voxels
        where = inside.nonzero()
        extent = (where.max(0).values - where.min(0).values + 1).tolist()
        assert extent == [2, 3, 2]  # one box, not scattered voxels
        assert bool((target[j][inside] == inner_label).all()) and bool((target[j][~inside] == outer_label).all())
    # the box's place comes from the generator: the same seed, the same mix; another seed moves it
    again, _ = copy_paste_mix(images, labels, unlabelled, pseudo, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed)
    moved = [
        copy_paste_mix(images, labels, unlabelled, pseudo, 0.5, torch.Generator().manual_seed(s))[0] for s in (1, 2, 3)
    ]
    assert any(not torch.equal(m, mixed) for m in moved)
    # fraction 1: the whole patch is pasted; 0: one voxel
    whole, whole_target = copy_paste_mix(images, labels, unlabelled, pseudo, 1.0, torch.Generator())
    assert torch.equal(whole[0], images[0]) and torch.equal(whole_target[1], pseudo[1])
    single, _ = copy_paste_mix(images, labels, unlabelled, pseudo, 0.0, torch.Generator())
    assert int((single[0, 0] == 1.0).sum()) == 1
    with pytest.raises(ValueError, match="patches differ"):
        copy_paste_mix(images, labels, unlabelled[:, :, :2], pseudo, 0.5, torch.Generator())
    with pytest.raises(ValueError, match="do not fit"):
        copy_paste_mix(images, labels, unlabelled, pseudo[:2], 0.5, torch.Generator())
