"""The arithmetic prediction runs in, decided once per run on the machine that predicts (rule
``choose_inference_precision``).

``predict.precision: auto | fp32 | bf16`` (default ``auto``). ``bf16`` runs each window batch's forward pass under
bf16 autocast (:func:`carve.training.precision.autocast`); the softmax, the Gaussian weighting and every
accumulator stay float32 (or float16 with ``half_precision``), so the uncertainty maps are built as in fp32.
``auto`` times the run's own trained network (the first model) on a batch of ``batch_windows`` windows of the
planned patch, in fp32 and in bf16, and keeps bf16 only at a speed-up of at least
:data:`carve.training.precision.MIN_SPEEDUP` (:func:`carve.training.precision.resolve_precision`); on a device
without native bf16, fp32 without timing. Inference is timed on its own because its speed-up differs from a
training step's (no backward pass; on one Intel Xeon with AMX: 2.7x against 2.2x).

Where ``auto`` times, the chosen precision is also timed in the channels-last memory format, kept where it is
clearly faster (as in training). The decision goes to ``inference_precision.json`` (precision, why, memory
format, device, patch and batch; the timings to the
rule's log only, so the same decision writes the same bytes); every predicting rule reads it, so all cases of a
run are predicted alike and a rerun does not time again. A job that lands on a device without bf16 (another
node of a cluster) predicts in fp32 and says so in its log (:func:`load_inference_precision`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from carve.errors import InputError
from carve.imaging.io import atomic_write_text
from carve.training.precision import PRECISIONS, bf16_available, resolve_precision, resolved, runnable_precision

LOG = logging.getLogger("carve.prediction.inference_precision")
DECISION_FORMAT = "carve-inference-precision/1"
WARMUP_BATCHES = 2
TIMED_BATCHES = 5


def time_window_batches(
    model: Any,
    patch_size: Sequence[int],
    batch_windows: int,
    device: str,
    precision: str,
    *,
    in_channels: int,
    batches: int = TIMED_BATCHES,
    warmup: int = WARMUP_BATCHES,
    seed: int = 0,
    timer: Callable[[], float] = time.perf_counter,
    channels_last: bool = False,
) -> list[float]:
    """Seconds of each of ``batches`` forward passes (after ``warmup`` untimed ones) of ``model`` over
    ``batch_windows`` random windows of ``in_channels`` x ``patch_size``, under inference mode in ``precision``,
    with the float32 softmax prediction takes; with ``channels_last`` model and windows in the
    ``torch.channels_last_3d`` memory format (the model is left in that format)."""
    import torch

    from carve.training.precision import autocast, memory_format, timed_calls

    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn((batch_windows, int(in_channels), *map(int, patch_size)), generator=generator).to(device)
    batch = batch.contiguous(memory_format=memory_format(channels_last))
    model = model.to(device, memory_format=memory_format(channels_last)).eval()

    def forward() -> None:
        with autocast(device, precision):
            logits = model(batch)
        if isinstance(logits, list | tuple):
            logits = logits[0]
        torch.softmax(logits.float(), dim=1)

    with torch.inference_mode():
        return timed_calls(forward, device, batches, warmup, timer)


def decide_inference_precision(
    requested: str,
    model: Any,
    patch_size: Sequence[int],
    batch_windows: int,
    device: str,
    *,
    in_channels: int,
    measure: Callable[[str], Sequence[float]] | None = None,
    measure_channels_last: Callable[[str], Sequence[float]] | None = None,
    available: Callable[[str], bool] = bf16_available,
    log: logging.Logger = LOG,
) -> dict[str, Any]:
    """The decision record: ``requested`` (the config's ``predict.precision``) resolved on ``device`` by timing
    ``model`` on windows of ``in_channels`` x ``patch_size`` (``measure(precision)`` and
    ``measure_channels_last(precision)`` replace the timings in tests). Where ``auto`` times (a device with bf16),
    the chosen precision is timed in the channels-last memory format too, kept at
    :data:`carve.training.precision.CHANNELS_LAST_MIN_SPEEDUP` or more (``channels_last``); otherwise torch's
    contiguous layout."""
    from carve.training.precision import choose_channels_last, describe_layout

    if requested not in PRECISIONS:
        raise InputError(f"predict.precision: '{requested}' is not one of {', '.join(PRECISIONS)}")

    def timing(channels_last: bool) -> Callable[[str], Sequence[float]]:
        return lambda p: time_window_batches(
            model, patch_size, batch_windows, device, p, in_channels=in_channels, channels_last=channels_last
        )

    timed: dict[str, Sequence[float]] = {}
    contiguous = measure or timing(False)

    def timer(precision: str) -> Sequence[float]:
        timed[precision] = contiguous(precision)
        return timed[precision]

    decision = resolve_precision(requested, device, timer, available=available)
    if "bf16_speedup" in decision:
        log.info(
            "predict.precision auto: %d window(s) of %s in %.4f s fp32, %.4f s bf16 (medians; x%.2f) -> %s",
            batch_windows,
            "x".join(map(str, patch_size)),
            decision["seconds_per_step"]["fp32"],
            decision["seconds_per_step"]["bf16"],
            decision["bf16_speedup"],
            decision["precision"],
        )
    else:
        log.info("predict.precision %s: %s (%s)", requested, decision["precision"], decision["precision_from"])
    channels_last = False
    if requested == "auto" and decision["precision"] in timed:
        chosen = decision["precision"]
        layout = choose_channels_last(timed[chosen], (measure_channels_last or timing(True))(chosen))
        channels_last = layout["channels_last"]
        log.info("memory format auto: %s", describe_layout(layout, chosen))
    return {
        "format": DECISION_FORMAT,
        "requested": requested,
        "precision": decision["precision"],
        "precision_from": decision["precision_from"],
        "channels_last": channels_last,
        "device": "cuda" if str(device).startswith("cuda") else "cpu",
        "patch_size": [int(p) for p in patch_size],
        "batch_windows": int(batch_windows),
    }


def choose_inference_precision(
    plans_path: Path,
    model_paths: Sequence[Path],
    out: Path,
    predict_options: Mapping[str, Any],
    device: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """Rule ``choose_inference_precision``: the precision of the run's forward passes (the config's
    ``predict.precision``, ``auto`` timed on the first trained model, the planned patch and the configured
    ``predict.batch_windows``), written to ``out``."""
    import torch

    from carve.planning.plan import load_plans
    from carve.prediction.predict import PredictOptions, select_device
    from carve.training.network import load_model

    if not model_paths:
        raise InputError("choose_inference_precision: no trained model to time")
    torch.set_num_threads(max(1, int(threads)))
    device = select_device(device)
    plans = load_plans(plans_path)
    model = load_model(model_paths[0], device=device)[0]
    options = PredictOptions.from_config(predict_options)
    decision = decide_inference_precision(
        options.precision,
        model,
        plans["patch_size"],
        options.batch_windows,
        device,
        in_channels=len(plans["channels"]),
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out), json.dumps(decision, indent=2) + "\n")
    return decision


def load_inference_precision(
    path: Path, device: str, *, available: Callable[[str], bool] = bf16_available, log: logging.Logger = LOG
) -> str:
    """The precision ``inference_precision.json`` decided, for a job on ``device``: fp32, with a warning, where
    the decision is bf16 but this device has no native bf16."""
    record = _read_decision(path)
    if record.get("format") != DECISION_FORMAT:
        raise InputError(f"{path}: not an inference precision decision (format {DECISION_FORMAT} expected)")
    precision = resolved(str(record.get("precision")), f"{path} precision")
    return runnable_precision(precision, device, log, f"{path} decided", "predicting", available)


def _read_decision(path: Path) -> Mapping[str, Any]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the inference precision ({error})") from error
    return record if isinstance(record, Mapping) else {}


def load_inference_channels_last(path: Path) -> bool:
    """Whether ``inference_precision.json`` chose the channels-last memory format (False in records written before
    it was timed)."""
    value = _read_decision(path).get("channels_last", False)
    if not isinstance(value, bool):
        raise InputError(f"{path}: channels_last {value!r} is not true or false")
    return value
