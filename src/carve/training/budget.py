"""A run's training budget as a number of iterations, fixed once when the run is planned.

The config gives ``train.iterations`` (per fold), or ``train.epochs`` (x ``iterations_per_epoch``), or, where it
gives neither, ``train.time_budget_min`` (default 5). A time budget is turned into iterations here, in rule
``plan``: a short timed run of the planned network's training step (:func:`carve.training.train.train_step`: the
same augmentation, network, loss and optimiser, on random data of the planned patch and batch) on the device and
thread count that will train; its median step time, rounded to the nearest of the R10 preferred numbers (1, 1.25,
1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8 per decade: steps of about 25 %), so that timing noise of a few per cent gives the
same count on the same machine. The count is ``floor(budget / rounded seconds)``. What an iteration costs beyond
the step (patch sampling, validation between epochs, checkpoints) is not added: on hippocampus (AMD EPYC, 2
threads) whole training iterations took 0.39 s against timed steps of 0.40-0.45 s (docs/training.md).

``plans.json`` records the count with what it came from (``training``: the budget, the rounded seconds per
iteration, device, threads, precision); the exact timings are in the plan's log. Training then runs exactly that
many iterations and its learning-rate schedule ends there, so the same plans give the same weights (on a CPU), a
killed fold resumes to the same bytes, and a user may edit the count in plans.json. Planning again on a machine
whose step time falls on another grid value gives another count: to pin it across machines, give ``iterations``.

Importing this module does not import torch (the run's resolution reads :data:`DEFAULT_TIME_BUDGET_MIN`).
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from carve.errors import InputError

LOG = logging.getLogger("carve.training.budget")
DEFAULT_TIME_BUDGET_MIN = 5.0  # minutes per fold when the config names no budget
BUDGET_KEYS = ("iterations", "epochs", "time_budget_min")
PLANNED_KEYS = (*BUDGET_KEYS, "iterations_per_epoch", "precision")  # the train keys rule plan decides from
DEFAULT_ITERATIONS_PER_EPOCH = 50  # carve.training.train.TrainConfig's (a test keeps them equal)
R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)  # preferred numbers (ISO 3), one decade
WARMUP_STEPS = 3
TIMED_STEPS = 10


def on_grid(seconds: float) -> float:
    """``seconds`` rounded to the nearest R10 preferred number (nearest in ratio)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds per iteration must be positive and finite, got {seconds}")
    decade = math.floor(math.log10(seconds))
    candidates = [v * 10.0**d for d in (decade - 1, decade, decade + 1) for v in R10]
    best = min(candidates, key=lambda v: abs(math.log(v / seconds)))
    return float(f"{best:.3g}")


def iterations_for(budget_min: float, seconds_per_iteration: float) -> int:
    """Iterations that fill ``budget_min`` at ``seconds_per_iteration`` (already rounded), at least one."""
    return max(1, math.floor(budget_min * 60.0 / seconds_per_iteration + 1e-9))


def timed_count(budget_min: float, seconds: Sequence[float]) -> tuple[float, int]:
    """(seconds per iteration on the grid, iterations that fill ``budget_min``) from timed steps' ``seconds``."""
    per_iteration = on_grid(statistics.median(seconds))
    return per_iteration, iterations_for(budget_min, per_iteration)


def requested_budget(train: Mapping[str, Any]) -> tuple[str, float]:
    """Which budget the config's ``train`` keys give and its value: ``("iterations", n)`` (``iterations``, or
    ``epochs`` x ``iterations_per_epoch``), or ``("time_budget_min", minutes)`` where neither count is given."""
    if train.get("iterations") is not None:
        return "iterations", int(train["iterations"])
    if train.get("epochs") is not None:
        per_epoch = int(train.get("iterations_per_epoch") or DEFAULT_ITERATIONS_PER_EPOCH)
        return "epochs", int(train["epochs"]) * per_epoch
    budget = train.get("time_budget_min", DEFAULT_TIME_BUDGET_MIN)
    if budget is None:
        raise InputError("config train: give iterations, epochs or time_budget_min (all are null)")
    return "time_budget_min", float(budget)


def time_training_steps(
    config: Any,
    device: str = "cpu",
    threads: int = 1,
    *,
    steps: int = TIMED_STEPS,
    warmup: int = WARMUP_STEPS,
    timer: Callable[[], float] = time.perf_counter,
    semi: Any = None,
) -> list[float]:
    """Seconds of each of ``steps`` training steps (after ``warmup`` untimed ones) of ``config`` (a
    :class:`carve.training.train.TrainConfig`) on random data of its patch and batch, on ``device`` with
    ``threads`` threads. With ``semi`` (:class:`carve.training.semi_supervised.SemiSupervisedOptions`) of method
    ``mean_teacher`` the step is :func:`carve.training.train.mean_teacher_step`, with its unlabelled patches and
    its teacher: a time budget then buys the iterations the semi-supervised fold can afford."""
    import numpy as np
    import torch

    from carve.training.augment import spatial_margin
    from carve.training.network import UNet3D
    from carve.training.precision import memory_format, timed_calls
    from carve.training.train import _build_optimizer, mean_teacher_step, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    network = replace(config.network, deep_supervision=config.deep_supervision)
    model = UNet3D(network).to(device, memory_format=memory_format(config.channels_last))
    optimizer = _build_optimizer(model, replace(config, pretrained=None), LOG)
    margin = spatial_margin(config.augment, config.patch_size, config.spacing_mm)
    crop = tuple(p + 2 * m for p, m in zip(config.patch_size, margin, strict=True))
    rng = np.random.default_rng(config.seed)
    images = rng.standard_normal((config.batch_size, network.in_channels, *crop)).astype(np.float32)
    labels = rng.integers(0, network.n_classes, (config.batch_size, *crop)).astype(np.int64)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()

    def step() -> None:
        train_step(model, optimizer, images, labels, config, network, generator, device)

    if semi is not None and semi.method == "mean_teacher":
        teacher = copy.deepcopy(model).requires_grad_(False)
        shape = (semi.unlabelled_per_batch, network.in_channels, *crop)
        unlabelled = rng.standard_normal(shape).astype(np.float32)

        def step() -> None:
            mean_teacher_step(
                model, teacher, optimizer, images, labels, unlabelled, config, network, generator, device, semi, 0.5,
                WARMUP_STEPS + TIMED_STEPS,
            )  # fmt: skip

    return timed_calls(step, device, steps, warmup, timer)


def training_budget(
    plans: Mapping[str, Any],
    train: Mapping[str, Any],
    seed: int,
    threads: int,
    *,
    measure: Callable[..., list[float]] = time_training_steps,
    bf16: Callable[[str], bool] | None = None,
    log: logging.Logger = LOG,
    semi_supervised: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``training`` entry of plans.json: the iterations each fold trains, the precision it trains in, and what
    they came from.

    ``plans``: the planned network, patch and batch (``memory.device`` is the device that trains); ``train``: the
    config's ``train`` keys; ``threads``: those of one training job. ``train.precision`` (default ``auto``) is
    resolved by :func:`carve.training.precision.resolve_precision` (``auto`` times the step in fp32 and bf16 where
    the device has bf16: ``bf16`` says whether, :func:`carve.training.precision.bf16_available` by default). A
    time budget is then measured in the chosen precision. Where ``auto`` times anyway (a device with bf16, or a time
    budget) the chosen precision's step is timed in the channels-last memory format too, kept where it is at least
    :data:`carve.training.precision.CHANNELS_LAST_MIN_SPEEDUP` times faster (``channels_last``); a precision the
    config names keeps torch's contiguous layout. ``measure(config, device, threads)`` times the step (a
    stand-in in tests). The timings go to the log only, so that the same decision gives the same plans; the
    manifest records the CPU's bf16 units (:mod:`carve.machine`) beside it. ``semi_supervised``: the config's
    block; a method that trains in one job (``mean_teacher``) is timed with its own step, passed to ``measure`` as
    ``semi``, and named in the entry, so that a time budget means the same minutes whatever the method; the
    supervised step is timed too (``supervised_iterations``: what the learning curve's supervised models train)."""
    from carve.training.fold import train_config_from
    from carve.training.precision import (
        DEFAULT_PRECISION,
        bf16_available,
        choose_channels_last,
        describe_layout,
        resolve_precision,
    )
    from carve.training.semi_supervised import SemiSupervisedOptions

    kind, value = requested_budget(train)
    device = str(plans.get("memory", {}).get("device", "cpu"))
    config = train_config_from(plans, train, seed, iterations=1)
    semi = SemiSupervisedOptions.from_config(semi_supervised)
    measure_supervised = measure
    if semi.method == "mean_teacher":
        measure = partial(measure, semi=semi)
    timings: dict[tuple[str, bool], list[float]] = {}

    def timed(precision: str, channels_last: bool = False) -> list[float]:
        key = (precision, channels_last)
        if key not in timings:
            variant = replace(config, precision=precision, channels_last=channels_last)
            timings[key] = list(measure(variant, device, threads))
        return timings[key]

    requested = str(train.get("precision") or DEFAULT_PRECISION)
    decision = resolve_precision(requested, device, timed, available=bf16 or bf16_available)
    precision = decision["precision"]
    if "bf16_speedup" in decision:
        log.info(
            "precision auto: training step %.4f s in fp32, %.4f s in bf16 (medians; x%.2f) -> %s",
            decision["seconds_per_step"]["fp32"],
            decision["seconds_per_step"]["bf16"],
            decision["bf16_speedup"],
            precision,
        )
    channels_last = False
    if requested == "auto" and (timings or kind == "time_budget_min"):  # where it times anyway: the layout too
        layout = choose_channels_last(timed(precision), timed(precision, True))
        channels_last = layout["channels_last"]
        log.info("memory format auto: training step %s", describe_layout(layout, precision))
    runtime = {
        **({"semi_supervised": semi.method, "unlabelled_per_batch": semi.unlabelled_per_batch} if semi.enabled else {}),
        **({"copy_paste": True} if semi.copy_paste else {}),
        "device": device,
        "threads": int(threads),
        "precision": precision,
        "precision_from": decision["precision_from"],
        "channels_last": channels_last,
    }
    entry: dict[str, Any] = {"iterations": None, "from": kind}
    if kind != "time_budget_min":
        entry["iterations"] = int(value)
        if kind == "epochs":
            entry["epochs"] = int(train["epochs"])
        if train.get("time_budget_min") is not None:
            log.info("train.%s gives the count; train.time_budget_min (%s) is not used", kind, train["time_budget_min"])
        return {**entry, **runtime}
    seconds = timed(precision, channels_last)
    per_iteration, iterations = timed_count(value, seconds)
    log.info(
        "time budget %.3g min: training step %.4f s (median of %d: %s) -> %.3g s per iteration on the grid -> %d "
        "iterations (%s, %d thread(s), %s%s)",
        value,
        statistics.median(seconds),
        len(seconds),
        " ".join(f"{s:.4f}" for s in seconds),
        per_iteration,
        iterations,
        device,
        threads,
        precision,
        ", channels-last" if channels_last else "",
    )
    supervised = {}
    if semi.method == "mean_teacher":  # the learning curve's models train supervised: the same minutes' count
        variant = replace(config, precision=precision, channels_last=channels_last)
        supervised_seconds, supervised_count = timed_count(value, measure_supervised(variant, device, threads))
        supervised = {
            "supervised_iterations": supervised_count,
            "supervised_seconds_per_iteration": supervised_seconds,
        }
        log.info(
            "time budget %.3g min: a supervised step (the learning curve's) %.3g s on the grid -> %d iterations",
            value,
            supervised_seconds,
            supervised["supervised_iterations"],
        )
    return {
        **entry,
        "iterations": iterations,
        "time_budget_min": value,
        "seconds_per_iteration": per_iteration,
        **supervised,
        **runtime,
    }


def planned_precision(plans: Mapping[str, Any]) -> str:
    """The precision a fold of these plans trains in (``plans["training"]["precision"]``; fp32 where the plans
    name none, as plans written before it was a setting did on a CPU)."""
    from carve.training.precision import resolved

    training = plans.get("training")
    value = training.get("precision", "fp32") if isinstance(training, Mapping) else "fp32"
    return resolved(value, "plans.json training.precision")


def planned_channels_last(plans: Mapping[str, Any]) -> bool:
    """Whether a fold of these plans trains in the channels-last memory format (``plans["training"]
    ["channels_last"]``; contiguous where the plans do not say)."""
    training = plans.get("training")
    value = training.get("channels_last", False) if isinstance(training, Mapping) else False
    if not isinstance(value, bool):
        raise InputError(f"plans.json training.channels_last: {value!r} is not true or false")
    return value


def planned_iterations(plans: Mapping[str, Any], where: str | Path = "plans.json", supervised: bool = False) -> int:
    """The iterations a fold of these plans trains (``plans["training"]["iterations"]``). ``supervised``: those of
    a supervised model of the same budget (the learning curve's) where the folds train a dearer mean-teacher step
    within a time budget (``training.supervised_iterations``); the fold's count elsewhere."""
    training = plans.get("training")
    count = training.get("iterations") if isinstance(training, Mapping) else None
    if supervised and isinstance(training, Mapping) and "supervised_iterations" in training:
        count = training["supervised_iterations"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(
            f"{where}: no training iteration count (training.iterations, a positive integer); rerun rule plan "
            "(plans made before carve fixed the count at planning lack it)"
        )
    return count


def plan_training_run(
    images: Sequence[Path],
    labels: Sequence[Path],
    label_names: Mapping[int, str],
    options: Any,
    out: Path,
    datasets: Mapping[str, Mapping] | None,
    train: Mapping[str, Any],
    seed: int,
    threads: int,
    semi_supervised: Mapping[str, Any] | None = None,
) -> dict:
    """Rule ``plan``: the dataset's plans (:func:`carve.planning.plan.dataset_plans_for`) with the training budget
    fixed as iterations (:func:`training_budget`), written to ``out``."""
    from carve.planning.plan import dataset_plans_for, write_plans

    plans = dataset_plans_for(images, labels, label_names, options, datasets)
    plans["training"] = training_budget(plans, train, seed, threads, semi_supervised=semi_supervised)
    write_plans(out, plans)
    return plans
