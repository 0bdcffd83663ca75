"""carve.training.budget: a time budget becomes a recorded count of iterations; the count decides training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from carve.errors import InputError
from carve.training.budget import (
    R10,
    iterations_for,
    on_grid,
    planned_iterations,
    requested_budget,
    time_training_steps,
    training_budget,
)
from carve.training.fold import train_config_from
from carve.training.network import load_payload
from carve.training.train import TrainConfig, train_fold

torch.set_num_threads(1)

PLANS = {
    "channels": [{"name": "image", "modality": "MR"}],
    "n_classes": 3,
    "batch_size": 2,
    "patch_size": [8, 16, 16],
    "target_spacing_mm": [3.0, 1.0, 1.0],
    "mirror_axes": [],
    "memory": {"device": "cpu"},
    "network": {
        "base_channels": 4,
        "max_channels": 8,
        "strides": [[1, 1, 1], [1, 2, 2]],
        "kernel_sizes": [[1, 3, 3], [3, 3, 3]],
    },
}


def test_grid_values_stay_and_small_noise_lands_on_the_same_value() -> None:
    for decade in (0.01, 0.1, 1.0, 10.0):
        for value in R10:
            assert on_grid(value * decade) == pytest.approx(value * decade)
    assert {on_grid(0.5 * f) for f in (0.95, 0.98, 1.0, 1.03, 1.08)} == {0.5}
    assert on_grid(0.44) == 0.4 and on_grid(0.46) == 0.5  # nearer in ratio: 0.447 is the boundary
    assert on_grid(0.0095) == 0.01 and on_grid(9.2) == 10.0  # across a decade
    with pytest.raises(ValueError, match="positive"):
        on_grid(0.0)


def test_iterations_fill_the_budget() -> None:
    assert iterations_for(5.0, 0.5) == 600 and iterations_for(2.3, 0.315) == 438
    assert iterations_for(0.001, 10.0) == 1


def test_a_count_given_decides_before_a_time_budget() -> None:
    assert requested_budget({"iterations": 120, "epochs": 3, "time_budget_min": 5}) == ("iterations", 120)
    assert requested_budget({"epochs": 3, "iterations_per_epoch": 7, "time_budget_min": 5}) == ("epochs", 21)
    assert requested_budget({"epochs": 3}) == ("epochs", 150)
    assert requested_budget({}) == ("time_budget_min", 5.0)
    assert requested_budget({"time_budget_min": 0.5, "epochs": None}) == ("time_budget_min", 0.5)
    with pytest.raises(InputError, match="iterations, epochs or time_budget_min"):
        requested_budget({"time_budget_min": None})


NO_BF16 = lambda device: False  # noqa: E731  (a CPU without bf16 units, whatever this one has)


def test_a_time_budget_is_timed_on_the_planned_step_and_recorded() -> None:
    seen = {}

    def measure(config, device, threads):
        seen.update(patch=config.patch_size, batch=config.batch_size, device=device, threads=threads)
        return [0.30, 0.29, 0.31, 0.60]  # one slow outlier: the median ignores it

    entry = training_budget(PLANS, {"time_budget_min": 2.0}, seed=0, threads=2, measure=measure, bf16=NO_BF16)
    assert seen == {"patch": (8, 16, 16), "batch": 2, "device": "cpu", "threads": 2}
    per_iteration = on_grid(0.305)
    assert entry == {
        "iterations": int(120 / per_iteration),
        "from": "time_budget_min",
        "time_budget_min": 2.0,
        "seconds_per_iteration": per_iteration,
        "device": "cpu",
        "threads": 2,
        "precision": "fp32",
        "precision_from": "auto: cpu has no native bf16",
        "channels_last": False,  # timed alike in both memory formats: torch's default layout stays
    }
    noisy = training_budget(PLANS, {"time_budget_min": 2.0}, 0, 2, measure=lambda *a: [0.305 * 1.04] * 3, bf16=NO_BF16)
    assert noisy["iterations"] == entry["iterations"]  # 4 % slower: the same count


def test_a_mean_teacher_budget_times_its_own_step_and_the_supervised_one() -> None:
    def measure(config, device, threads, semi=None):
        return [0.8] * 3 if semi is not None else [0.4] * 3  # the mean teacher's step: twice the supervised one

    semi = {"method": "mean_teacher", "unlabelled_per_batch": 2}
    entry = training_budget(PLANS, {"time_budget_min": 2.0}, 0, 2, measure=measure, bf16=NO_BF16, semi_supervised=semi)
    assert (entry["iterations"], entry["seconds_per_iteration"]) == (150, 0.8)
    assert (entry["supervised_iterations"], entry["supervised_seconds_per_iteration"]) == (300, 0.4)
    assert entry["semi_supervised"] == "mean_teacher" and entry["unlabelled_per_batch"] == 2
    plans = {**PLANS, "training": entry}
    assert planned_iterations(plans) == 150 and planned_iterations(plans, supervised=True) == 300
    assert train_config_from(plans, {}, 0).iterations == 150
    assert train_config_from(plans, {}, 0, supervised=True).iterations == 300  # the learning curve's models
    # a supervised run's plans (and a mean teacher's with a count) have one count for both
    plain = {**PLANS, "training": training_budget(PLANS, {"time_budget_min": 2.0}, 0, 2, measure=measure, bf16=NO_BF16)}
    assert "supervised_iterations" not in plain["training"] and planned_iterations(plain, supervised=True) == 300
    counted = training_budget(PLANS, {"iterations": 40}, 0, 2, measure=measure, bf16=NO_BF16, semi_supervised=semi)
    assert "supervised_iterations" not in counted and counted["iterations"] == 40


def test_a_count_is_recorded_without_timing() -> None:
    def measure(*args):
        raise AssertionError("a count needs no timing")

    train = {"epochs": 4, "iterations_per_epoch": 5, "time_budget_min": 3, "precision": "fp32"}
    entry = training_budget(PLANS, train, 0, 1, measure=measure)
    assert entry["iterations"] == 20 and entry["from"] == "epochs" and entry["epochs"] == 4
    assert entry["precision"] == "fp32" and entry["precision_from"] == "config"
    assert training_budget(PLANS, {"iterations": 77}, 0, 1, measure=measure, bf16=NO_BF16)["iterations"] == 77


def step_times(fp32: float, bf16: float, channels_last: float = 1.0):
    """A stand-in for the timed step: the seconds of the precision it is asked for (times ``channels_last`` in
    that memory format), and the calls made."""
    calls = []

    def measure(config, device, threads):
        calls.append(config.precision + ("-cl" if config.channels_last else ""))
        seconds = [fp32, fp32 * 1.01, fp32 * 0.99] if config.precision == "fp32" else [bf16] * 3
        return [t * channels_last for t in seconds] if config.channels_last else seconds

    return measure, calls


def test_auto_precision_is_timed_and_a_time_budget_is_spent_in_the_faster_one() -> None:
    measure, calls = step_times(fp32=0.40, bf16=0.16)  # 2.5x, as AMX gives
    entry = training_budget(PLANS, {"time_budget_min": 2.0}, 0, 2, measure=measure, bf16=lambda device: True)
    assert calls == ["fp32", "bf16", "bf16-cl"]  # each timed once: the budget reuses bf16's timing
    assert entry["precision"] == "bf16" and entry["precision_from"].startswith("auto: timed")
    assert entry["seconds_per_iteration"] == on_grid(0.16) and entry["iterations"] == int(120 / on_grid(0.16))
    assert "seconds_per_step" not in entry and "bf16_speedup" not in entry  # timings to the log: same plans, same bytes
    measure, calls = step_times(fp32=0.40, bf16=0.36)  # 1.11x: not worth bf16's rounding
    entry = training_budget(PLANS, {"iterations": 30}, 0, 2, measure=measure, bf16=lambda device: True)
    assert calls == ["fp32", "bf16", "fp32-cl"] and entry["precision"] == "fp32" and entry["iterations"] == 30
    assert entry["channels_last"] is False
    with pytest.raises(InputError, match="no native bf16"):
        training_budget(PLANS, {"iterations": 30, "precision": "bf16"}, 0, 2, measure=measure, bf16=NO_BF16)
    forced = training_budget(PLANS, {"iterations": 30, "precision": "bf16"}, 0, 2, measure=measure, bf16=lambda d: True)
    assert forced["precision"] == "bf16" and forced["precision_from"] == "config"
    assert forced["channels_last"] is False  # a precision the config names: nothing timed, torch's default layout


def test_auto_trains_channels_last_only_where_it_pays() -> None:
    measure, calls = step_times(fp32=0.40, bf16=0.20, channels_last=0.8)  # 1.25x more in channels-last
    entry = training_budget(PLANS, {"time_budget_min": 2.0}, 0, 2, measure=measure, bf16=lambda device: True)
    assert calls == ["fp32", "bf16", "bf16-cl"] and entry["precision"] == "bf16" and entry["channels_last"] is True
    assert entry["seconds_per_iteration"] == on_grid(0.16)  # the budget is spent at the channels-last step time
    measure, calls = step_times(fp32=0.40, bf16=0.20, channels_last=0.95)  # 1.05x: below the 1.1 it must reach
    assert (
        training_budget(PLANS, {"iterations": 9}, 0, 2, measure=measure, bf16=lambda d: True)["channels_last"] is False
    )
    plans = {**PLANS, "training": {"iterations": 42, "precision": "bf16", "channels_last": True}}
    assert train_config_from(plans, {}, seed=0).channels_last is True
    assert train_config_from({**PLANS, "training": {"iterations": 42}}, {}, 0).channels_last is False  # older plans
    with pytest.raises(InputError, match="channels_last"):
        train_config_from({**PLANS, "training": {"iterations": 42, "channels_last": "yes"}}, {}, 0)


def test_a_channels_last_step_trains_and_its_weights_are_saved_contiguous(tmp_path) -> None:
    from carve.training.network import UNet3D, save_model

    config = replace(train_config_from({**PLANS, "training": {"iterations": 1, "channels_last": True}}, {}, 0))
    assert all(s > 0 for s in time_training_steps(config, "cpu", 1, steps=2, warmup=1))
    model = UNet3D(config.network).to(memory_format=torch.channels_last_3d)
    save_model(tmp_path / "m.pt", model, config.network, {})
    state = load_payload(tmp_path / "m.pt")["state_dict"]
    assert all(t.is_contiguous() for t in state.values())
    assert not all(p.is_contiguous() for p in model.parameters())  # the layout really differed


def test_the_fold_trains_in_the_planned_precision() -> None:
    plans = {**PLANS, "training": {"iterations": 42, "precision": "bf16"}}
    assert train_config_from(plans, {"precision": "auto"}, seed=0).precision == "bf16"  # the config's key decided it
    assert train_config_from({**PLANS, "training": {"iterations": 42}}, {}, 0).precision == "fp32"  # older plans
    legacy = {**PLANS, "training": {"iterations": 42, "precision": "bf16-autocast"}}  # CUDA plans of before
    assert train_config_from(legacy, {}, 0).precision == "bf16"
    with pytest.raises(InputError, match="not a resolved precision"):
        train_config_from({**PLANS, "training": {"iterations": 42, "precision": "auto"}}, {}, 0)


def test_the_fold_trains_the_planned_count_and_the_config_budget_keys_do_not_leak() -> None:
    plans = {**PLANS, "training": {"iterations": 42}}
    config = train_config_from(plans, {"epochs": 9, "time_budget_min": 1.0, "learning_rate": 3e-3}, seed=4)
    assert (config.iterations, config.epochs, config.time_budget_min) == (42, None, None)
    assert config.learning_rate == 3e-3 and config.seed == 4
    assert train_config_from(plans, {}, 0, iterations=5).iterations == 5
    for broken in ({}, {"training": {}}, {"training": {"iterations": 0}}, {"training": {"iterations": 2.5}}):
        with pytest.raises(InputError, match="rerun rule plan"):
            planned_iterations({**PLANS, **broken}, "results/x/plans.json")


def test_timing_runs_real_steps_and_reports_each() -> None:
    ticks = iter(range(1000))
    config = train_config_from({**PLANS, "training": {"iterations": 1}}, {}, 0)
    seconds = time_training_steps(config, "cpu", 1, steps=3, warmup=1, timer=lambda: float(next(ticks)))
    assert seconds == [1.0, 1.0, 1.0]
    assert all(0 < s < 60 for s in time_training_steps(config, "cpu", 1, steps=2, warmup=0))


def _sphere(seed: int):
    rng = np.random.default_rng(seed)
    label = np.zeros((12, 20, 20), np.uint8)
    label[3:9, 6:14, 6:14] = 1
    label[5:7, 8:12, 8:12] = 2
    image = (label + rng.normal(0, 0.3, label.shape)).astype(np.float32)[None]
    return image, label


def test_training_stops_at_the_count_even_with_a_time_budget_left(tmp_path) -> None:
    config = train_config_from({**PLANS, "training": {"iterations": 7}}, {"iterations_per_epoch": 3}, 0)
    config = replace(config, time_budget_min=1e-6)  # would end after one step if it counted
    train_fold([_sphere(0), _sphere(1)], [_sphere(2)], config, tmp_path)
    extra = load_payload(tmp_path / "model.pt")["extra"]
    assert extra["iterations"] == 7 and extra["epochs"] == 3  # 3 + 3 + 1


def test_the_default_time_budget_needs_no_count() -> None:
    assert TrainConfig().iterations is None and TrainConfig(iterations=3, time_budget_min=None).iterations == 3
