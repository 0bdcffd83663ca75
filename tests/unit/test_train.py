"""carve.training.train: learns a toy task, writes its files, resumes exactly, reproducible, transfer learning."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import carve.training.train as train_mod
from carve.training.augment import AugmentConfig
from carve.training.network import NetworkConfig, load_model
from carve.training.train import TrainConfig, dice_ce_loss, lr_factor, predict_volume, train_fold

torch.set_num_threads(1)

NET = NetworkConfig(
    in_channels=1,
    n_classes=2,
    base_channels=4,
    max_channels=16,
    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
    kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
)
LIGHT_AUG = AugmentConfig(
    p_rotation=0.2, p_scaling=0.2, p_gamma=0.2, p_brightness=0.1, p_contrast=0.1, p_noise=0.1, p_blur=0.0
)


def _sphere_case(seed: int, shape=(16, 24, 24), spacing=(2.0, 1.0, 1.0)):
    rng = np.random.default_rng(seed)
    centre = np.asarray(shape) / 2 + rng.uniform(-2, 2, 3) * (0.5, 1, 1)
    grid = np.indices(shape).astype(float)
    dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True)))
    label = (dist <= 6.0).astype(np.uint8)
    image = (label * 2.0 + rng.normal(0, 0.5, shape)).astype(np.float32)
    return (image - image.mean()) / image.std(), label


CASES = [_sphere_case(s)[0][None] for s in range(3)], [_sphere_case(s)[1] for s in range(3)]
TRAIN = list(zip(CASES[0][:2], CASES[1][:2], strict=True))
VAL = list(zip(CASES[0][2:], CASES[1][2:], strict=True))


def _config(**kw) -> TrainConfig:
    base = dict(
        epochs=3,
        time_budget_min=None,
        iterations_per_epoch=10,
        batch_size=2,
        patch_size=(8, 16, 16),
        spacing_mm=(2.0, 1.0, 1.0),
        learning_rate=1e-2,
        checkpoint_every_min=0.0,
        augment=LIGHT_AUG,
        network=NET,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def _crash_after_first_epoch(monkeypatch):
    """Make train_fold stop as if killed once its first epoch's curves (and checkpoint) are written; returns the
    real writer, to put back before the rerun."""
    real, calls = train_mod._write_curves, {"n": 0}

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(train_mod, "_write_curves", crash)
    return real


def _weights(path) -> dict[str, torch.Tensor]:
    return load_model(path)[0].state_dict()


def test_learns_a_bright_sphere_and_writes_its_files(tmp_path) -> None:
    model_path = train_fold(TRAIN, VAL, _config(epochs=6), tmp_path)
    assert model_path == tmp_path / "model.pt"
    for name in ("model.pt", "checkpoint.pt", "curves.tsv", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [line.split("\t") for line in (tmp_path / "curves.tsv").read_text().splitlines()]
    assert rows[0] == ["epoch", "iterations", "seconds", "train_loss", "lr", "val_dice_1"]
    assert [int(r[1]) for r in rows[1:]] == [10, 20, 30, 40, 50, 60]
    losses = [float(r[3]) for r in rows[1:]]
    assert losses[-1] < 0.6 * losses[0]
    assert float(rows[-1][5]) > 0.7  # validation Dice on the held-out sphere
    model, extra = load_model(model_path)
    assert extra["iterations"] == 60 and extra["train_config"]["batch_size"] == 2
    assert TrainConfig.from_dict(extra["train_config"]) == _config(epochs=6)
    probs = predict_volume(model, VAL[0][0], (8, 16, 16))
    assert probs.shape == (2, 16, 24, 24) and np.allclose(probs.sum(0), 1, atol=1e-4)


def test_same_seed_same_weights_and_other_seed_differs(tmp_path) -> None:
    a = _weights(train_fold(TRAIN, [], _config(epochs=1), tmp_path / "a"))
    b = _weights(train_fold(TRAIN, [], _config(epochs=1), tmp_path / "b"))
    c = _weights(train_fold(TRAIN, [], _config(epochs=1, seed=1), tmp_path / "c"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_killed_run_resumes_from_checkpoint_exactly(tmp_path, monkeypatch) -> None:
    config = _config(epochs=3)
    reference = _weights(train_fold(TRAIN, VAL, config, tmp_path / "ref"))
    real = _crash_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(TRAIN, VAL, config, tmp_path / "run")
    assert not (tmp_path / "run" / "model.pt").exists()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 10
    monkeypatch.setattr(train_mod, "_write_curves", real)
    resumed = train_fold(TRAIN, VAL, config, tmp_path / "run")
    rows = (tmp_path / "run" / "curves.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[1]) for r in rows] == [10, 20, 30]
    weights = _weights(resumed)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path) -> None:
    train_fold(TRAIN, [], _config(epochs=1), tmp_path)
    train_fold(TRAIN, [], _config(epochs=1, learning_rate=5e-3), tmp_path)
    rows = (tmp_path / "curves.tsv").read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].split("\t")[1] == "10"


def test_a_fold_resumed_from_its_final_checkpoint_writes_every_file(tmp_path) -> None:
    first = _weights(train_fold(TRAIN, VAL, _config(epochs=None, iterations=12), tmp_path))
    for name in ("model.pt", "curves.tsv", "curves.png"):  # killed after the last checkpoint, outputs removed
        (tmp_path / name).unlink()
    again = _weights(train_fold(TRAIN, VAL, _config(epochs=None, iterations=12), tmp_path))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all((tmp_path / name).stat().st_size > 0 for name in ("model.pt", "curves.tsv", "curves.png"))


def test_another_count_of_iterations_starts_afresh(tmp_path) -> None:
    train_fold(TRAIN, [], _config(epochs=None, iterations=12), tmp_path)
    path = train_fold(TRAIN, [], _config(epochs=None, iterations=5), tmp_path)  # a user's edit of the plans' count
    assert load_model(path)[1]["iterations"] == 5


def test_time_budget_stops_training(tmp_path) -> None:
    config = _config(epochs=None, time_budget_min=0.02, iterations_per_epoch=1000)  # one epoch spans the budget
    path = train_fold(TRAIN, VAL, config, tmp_path)
    extra = load_model(path)[1]
    assert 0 < extra["iterations"] < 1000 and "seconds" not in extra  # model.pt holds no wall-clock time
    rows = (tmp_path / "curves.tsv").read_text().splitlines()[1:]
    assert float(rows[-1].split("\t")[2]) >= 0.02 * 60  # trained until the budget was spent
    assert float(rows[-1].split("\t")[4]) < 0.05 * 1e-2  # the schedule reached (almost) zero at the budget


def test_pretrained_weights_are_loaded_and_encoder_frozen(tmp_path) -> None:
    source = train_fold(TRAIN, [], _config(epochs=1), tmp_path / "source")
    src = _weights(source)
    net3 = replace(NET, n_classes=3)  # a different head: not shape compatible, so not loaded
    config = _config(epochs=1, pretrained=str(source), freeze_encoder=True, network=net3, seed=4)
    target = _weights(train_fold(TRAIN, [], config, tmp_path / "target"))
    encoder = [k for k in src if k.startswith("encoder.")]
    assert encoder and all(torch.equal(target[k], src[k]) for k in encoder)
    assert not torch.equal(target["decoder.0.conv1.weight"], src["decoder.0.conv1.weight"])
    assert target["heads.1.weight"].shape[0] == 3


def test_loss_and_schedule_known_answers() -> None:
    target = torch.zeros(1, 2, 2, 2, 2)
    target[:, 1, 0] = 1
    target[:, 0, 1] = 1
    assert float(dice_ce_loss(target * 40 - 20, target)) < 1e-6
    assert float(dice_ce_loss(-(target * 40 - 20), target)) > 1.9
    assert lr_factor(0.0, "cosine", 0.0) == 1.0 and lr_factor(1.0, "cosine", 0.0) == 0.0
    assert math.isclose(lr_factor(0.5, "cosine", 0.0), 0.5)
    assert lr_factor(1.0, "poly", 0.1) == 0.0 and lr_factor(0.05, "poly", 0.1) < 1.0


def test_invalid_configuration_and_cases_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="iterations, epochs, time_budget_min"):
        _config(epochs=None, time_budget_min=None)
    with pytest.raises(ValueError, match="iterations must be positive"):
        _config(iterations=0)
    with pytest.raises(ValueError, match="divisible"):
        _config(patch_size=(8, 16, 18))
    with pytest.raises(ValueError, match="case 0"):
        train_fold([(TRAIN[0][0][0], TRAIN[0][1])], [], _config(), tmp_path)


def test_predict_volume_tiles_large_volumes() -> None:
    torch.manual_seed(0)
    from carve.training.network import UNet3D

    model = UNet3D(NET)
    image = np.random.default_rng(0).normal(size=(1, 13, 30, 27)).astype(np.float32)
    probs = predict_volume(model, image, (4, 8, 8))  # 13x30x27 is far larger than 4 patches: tiled
    assert probs.shape == (2, 13, 30, 27) and np.allclose(probs.sum(0), 1, atol=1e-4)
    whole = predict_volume(model, image, (16, 32, 32))
    assert whole.shape == probs.shape and not np.allclose(whole, probs)


def test_determinism_switch_sets_torch_flags() -> None:
    from carve.training.train import configure_determinism

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    try:
        configure_determinism("cuda", True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        configure_determinism("cuda", False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        configure_determinism("cpu", False)
        assert not torch.backends.cudnn.benchmark  # autotuning only where it can help
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.backends.cudnn.deterministic = before[1]
        torch.backends.cudnn.benchmark = False


# ---- mean teacher (semi-supervised, issue #19) -----------------------------------------------------------------
def _mean_teacher(**kw):
    from carve.training.semi_supervised import SemiSupervisedOptions

    return SemiSupervisedOptions(method="mean_teacher", **{"unlabelled_per_batch": 1, **kw})


UNLABELLED = [_sphere_case(s)[0][None] for s in range(10, 13)]


def test_mean_teacher_step_moves_the_teacher_towards_the_network_and_pulls_the_network_to_it() -> None:
    from carve.training.network import UNet3D
    from carve.training.train import _build_optimizer, mean_teacher_step

    config = _config()
    torch.manual_seed(0)
    model = UNet3D(replace(NET, deep_supervision=True))
    teacher = UNet3D(replace(NET, deep_supervision=True))  # another start: the EMA must close the gap
    optimizer = _build_optimizer(model, config, train_mod.LOG)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 1, 8, 16, 16)).astype(np.float32)
    labels = (images[:, 0] > 0).astype(np.uint8)
    unlabelled = rng.standard_normal((1, 1, 8, 16, 16)).astype(np.float32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss, consistency = mean_teacher_step(
        model, teacher, optimizer, images, labels, unlabelled, config, NET, torch.Generator().manual_seed(0), "cpu",
        _mean_teacher(ema_decay=0.5), 1.0, 10,
    )  # fmt: skip
    assert math.isfinite(loss) and consistency > 0
    for name, now in teacher.state_dict().items():  # decay 0.5: halfway between its old self and the network
        np.testing.assert_allclose(now, 0.5 * before[name] + 0.5 * model.state_dict()[name], rtol=1e-5, atol=1e-6)
    # the first step's decay is 1 - 1/(0 + 1) = 0: the teacher becomes the network
    mean_teacher_step(
        model, teacher, optimizer, images, labels, unlabelled, config, NET, torch.Generator().manual_seed(1), "cpu",
        _mean_teacher(ema_decay=0.99), 0.0, 0,
    )  # fmt: skip
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in model.state_dict().items())


def test_copy_paste_step_trains_on_mixes_with_the_teachers_labels_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    from carve.training import semi_supervised
    from carve.training.network import UNet3D
    from carve.training.train import _build_optimizer, mean_teacher_step

    config = _config()
    torch.manual_seed(0)
    model, teacher = UNet3D(replace(NET, deep_supervision=True)), UNet3D(replace(NET, deep_supervision=True))
    optimizer = _build_optimizer(model, config, train_mod.LOG)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 1, 8, 16, 16)).astype(np.float32)
    labels = (images[:, 0] > 0).astype(np.uint8)
    unlabelled = rng.standard_normal((2, 1, 8, 16, 16)).astype(np.float32)
    seen = []
    real_mix = semi_supervised.copy_paste_mix

    def spy(x, y, u, pseudo, fraction, generator):
        seen.append((u.shape, pseudo, fraction))
        return real_mix(x, y, u, pseudo, fraction, generator)

    monkeypatch.setattr(semi_supervised, "copy_paste_mix", spy)
    semi = _mean_teacher(copy_paste=True, copy_paste_fraction=0.5, unlabelled_per_batch=2)
    loss, term = mean_teacher_step(
        model, teacher, optimizer, images, labels, unlabelled, config, NET, torch.Generator().manual_seed(0), "cpu",
        semi, 1.0, 10,
    )  # fmt: skip
    assert math.isfinite(loss) and term > 0 and len(seen) == 1
    shape, pseudo, fraction = seen[0]
    assert shape[0] == 2 and fraction == 0.5 and pseudo.dtype == torch.long and int(pseudo.max()) < NET.n_classes
    # a whole fold with copy-paste: other weights than plain consistency, the same bytes again, and after a kill
    config = _config(epochs=3)
    path = train_fold(TRAIN, VAL, config, tmp_path / "ref", unlabelled=UNLABELLED, semi=_mean_teacher(copy_paste=True))
    reference = _weights(path)
    plain = _weights(train_fold(TRAIN, VAL, config, tmp_path / "plain", unlabelled=UNLABELLED, semi=_mean_teacher()))
    assert not all(torch.equal(v, plain[k]) for k, v in reference.items())
    real = _crash_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(TRAIN, VAL, config, tmp_path / "run", unlabelled=UNLABELLED, semi=_mean_teacher(copy_paste=True))
    monkeypatch.setattr(train_mod, "_write_curves", real)
    resumed = _weights(
        train_fold(TRAIN, VAL, config, tmp_path / "run", unlabelled=UNLABELLED, semi=_mean_teacher(copy_paste=True))
    )
    assert all(torch.equal(v, resumed[k]) for k, v in reference.items())


def test_mean_teacher_fold_saves_the_teacher_with_both_dice_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    config, semi = _config(epochs=3), _mean_teacher()
    path = train_fold(TRAIN, VAL, config, tmp_path / "ref", unlabelled=UNLABELLED, semi=semi)
    model, extra = load_model(path)
    record = extra["semi_supervised"]
    assert record["method"] == "mean_teacher" and record["saved"] == "teacher" and record["unlabelled_images"] == 3
    assert record["teacher_val_dice"] == extra["val_dice"] and len(record["student_val_dice"]) == 1
    ckpt = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, ckpt["teacher"][k]) for k, v in model.state_dict().items())  # model.pt = teacher
    assert not all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    # the same again: the same bytes; a supervised fold of the same config: other weights
    again = _weights(train_fold(TRAIN, VAL, config, tmp_path / "again", unlabelled=UNLABELLED, semi=semi))
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    plain = _weights(train_fold(TRAIN, VAL, config, tmp_path / "plain"))
    assert not all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())
    # killed after its first epoch's checkpoint, then resumed: the uninterrupted weights
    real = _crash_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(TRAIN, VAL, config, tmp_path / "run", unlabelled=UNLABELLED, semi=semi)
    monkeypatch.setattr(train_mod, "_write_curves", real)
    # other semi-supervised options do not resume that checkpoint
    log = []
    monkeypatch.setattr(train_mod.LOG, "warning", lambda msg, *a: log.append(msg % a))
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes((tmp_path / "run" / "checkpoint.pt").read_bytes())
    train_fold(TRAIN, VAL, config, other, unlabelled=UNLABELLED, semi=_mean_teacher(ema_decay=0.9))
    assert any("another configuration" in m for m in log)
    resumed = _weights(train_fold(TRAIN, VAL, config, tmp_path / "run", unlabelled=UNLABELLED, semi=semi))
    assert all(torch.equal(v, resumed[k]) for k, v in model.state_dict().items())


def test_mean_teacher_needs_unlabelled_images_of_the_networks_channels(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs unlabelled images"):
        train_fold(TRAIN, VAL, _config(epochs=1), tmp_path, semi=_mean_teacher())
    with pytest.raises(ValueError, match="unlabelled image 1: shape"):
        train_fold(TRAIN, VAL, _config(epochs=1), tmp_path, unlabelled=[UNLABELLED[0], UNLABELLED[1][0]],
                   semi=_mean_teacher())  # fmt: skip


def _student(**kw):
    from carve.training.semi_supervised import SemiSupervisedOptions

    return SemiSupervisedOptions(method="self_training", **kw)


def _pseudo_cases():
    from carve.training.semi_supervised import IGNORE_LABEL

    cases = []
    for s in range(20, 22):
        image, label = _sphere_case(s)
        label = label.copy()
        label[:4] = IGNORE_LABEL  # the teacher was unsure in the first slices
        cases.append((image[None], label))
    return cases


def test_a_self_training_student_learns_from_pseudo_labels_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    config, semi = _config(epochs=3), _student()
    path = train_fold(TRAIN, VAL, config, tmp_path / "ref", semi=semi, pseudo_cases=_pseudo_cases())
    model, extra = load_model(path)
    record = extra["semi_supervised"]
    assert (
        record["method"] == "self_training" and record["pseudo_labelled_images"] == 2 and record["saved"] == "network"
    )
    plain = _weights(train_fold(TRAIN, VAL, config, tmp_path / "plain"))
    assert not all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())
    real = _crash_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(TRAIN, VAL, config, tmp_path / "run", semi=semi, pseudo_cases=_pseudo_cases())
    monkeypatch.setattr(train_mod, "_write_curves", real)
    resumed = _weights(train_fold(TRAIN, VAL, config, tmp_path / "run", semi=semi, pseudo_cases=_pseudo_cases()))
    assert all(torch.equal(v, resumed[k]) for k, v in model.state_dict().items())


def test_a_student_needs_pseudo_labels_within_the_classes(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs pseudo-labelled images"):
        train_fold(TRAIN, VAL, _config(epochs=1), tmp_path, semi=_student())
    image, label = _pseudo_cases()[0]
    label = label.copy()
    label[-1, 0, 0] = 7
    with pytest.raises(ValueError, match=r"label values \[0, 1, 7, 255\] beyond 2 classes"):
        train_fold(TRAIN, VAL, _config(epochs=1), tmp_path, semi=_student(), pseudo_cases=[(image, label)])
