"""The arithmetic a network runs in: fp32, or bf16 autocast where the hardware makes it clearly faster.

``precision: auto | fp32 | bf16`` (config ``train.precision``). ``bf16`` runs the network's forward pass under
``torch.autocast(device_type, dtype=torch.bfloat16)`` (oneDNN's bf16 kernels on a CPU with AVX512-BF16 or AMX,
tensor cores on CUDA); the loss and the softmax are taken in float32 and the weights stay float32, so a checkpoint
is the same kind of file in either precision. ``auto`` decides by measurement on the machine that runs the job
(:func:`resolve_precision`): the planned network's real training step is timed in both precisions and bf16 is
chosen only where its median step is at least :data:`MIN_SPEEDUP` times faster; where the device cannot run bf16
at all, fp32 without timing. Nothing assumes the hardware: a CPU's bf16 units (:mod:`carve.machine`) are recorded
beside the choice, which says why two machines chose differently.

Importing this module does not import torch.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from carve.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED = ("fp32", "bf16")
DEFAULT_PRECISION = "auto"
MIN_SPEEDUP = 1.2  # auto takes bf16 only when its median step is at least this many times faster than fp32
CHANNELS_LAST_MIN_SPEEDUP = 1.1  # auto trains channels-last only when that makes the chosen precision this much faster
LEGACY = {"bf16-autocast": "bf16"}  # plans written before precision was a setting (bf16 on CUDA, fp32 elsewhere)


def device_type(device: str) -> str:
    """``cuda`` or ``cpu``: the device type torch.autocast takes."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def bf16_available(device: str) -> bool:
    """Whether ``device`` runs bf16 convolutions natively: CUDA's own check, on a CPU oneDNN's (AVX512-BF16 or
    AMX; without them torch emulates bf16 slowly, which ``auto`` never picks)."""
    import torch

    if device_type(device) == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def _timed_speedup(
    baseline: Sequence[float], candidate: Sequence[float], names: tuple[str, str], missing: str
) -> tuple[float, float, float]:
    """The medians of two sets of timed steps and the baseline's over the candidate's (the candidate's speed-up);
    ``missing``: the error where either set is empty."""
    if not baseline or not candidate:
        raise ValueError(missing)
    slow, fast = statistics.median(baseline), statistics.median(candidate)
    if slow <= 0 or fast <= 0:
        raise ValueError(f"step times must be positive, got medians {slow} ({names[0]}) and {fast} ({names[1]})")
    return slow, fast, slow / fast


def choose_channels_last(
    contiguous_seconds: Sequence[float],
    channels_last_seconds: Sequence[float],
    min_speedup: float = CHANNELS_LAST_MIN_SPEEDUP,
) -> dict:
    """Whether the ``torch.channels_last_3d`` memory format pays: its median step at least ``min_speedup`` times
    faster than the contiguous one's (equal speed keeps the contiguous layout, torch's default)."""
    names = ("contiguous", "channels_last")
    contiguous, channels_last, speedup = _timed_speedup(
        contiguous_seconds, channels_last_seconds, names, "choose_channels_last needs timings of both memory formats"
    )
    return {
        "channels_last": speedup >= min_speedup,
        "seconds": {"contiguous": contiguous, "channels_last": channels_last},
        "channels_last_speedup": round(speedup, 3),
    }


def runnable_precision(
    precision: str,
    device: str,
    log: logging.Logger,
    said_by: str,
    doing: str,
    available: Callable[[str], bool] | None = None,
) -> str:
    """``precision`` where ``device`` can run it; bf16 on a device without native bf16 (``available``, default
    :func:`bf16_available`) becomes fp32, with a warning ("<said_by> bf16, but <device> has no native bf16: <doing>
    in fp32")."""
    if precision == "bf16" and not (available or bf16_available)(device):
        log.warning("%s bf16, but %s has no native bf16: %s in fp32", said_by, device, doing)
        return "fp32"
    return precision


def describe_layout(layout: dict, precision: str) -> str:
    """A :func:`choose_channels_last` decision as the logs give it: both medians, the speed-up and the choice."""
    seconds, choice = layout["seconds"], "channels-last" if layout["channels_last"] else "contiguous"
    return (
        f"{seconds['contiguous']:.4f} s contiguous, {seconds['channels_last']:.4f} s channels-last in {precision} "
        f"(medians; x{layout['channels_last_speedup']:.2f}) -> {choice}"
    )


def timed_calls(
    call: Callable[[], object], device: str, count: int, warmup: int, timer: Callable[[], float]
) -> list[float]:
    """Seconds of each of ``count`` calls of ``call`` after ``warmup`` untimed ones, waiting for CUDA's queue."""
    import torch

    seconds = []
    for i in range(warmup + count):
        start = timer()
        call()
        if device_type(device) == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            seconds.append(timer() - start)
    return seconds


def memory_format(channels_last: bool):
    """The torch memory format of a model and its batches: ``channels_last_3d`` or torch's contiguous default."""
    import torch

    return torch.channels_last_3d if channels_last else torch.contiguous_format


def resolved(precision: str, where: str = "precision") -> str:
    """A resolved precision (``fp32`` or ``bf16``; the older ``bf16-autocast`` is read as ``bf16``)."""
    value = LEGACY.get(str(precision), str(precision))
    if value not in RESOLVED:
        raise InputError(f"{where}: '{precision}' is not a resolved precision ({' or '.join(RESOLVED)})")
    return value


def autocast(device: str, precision: str):
    """The context a forward pass runs in: bf16 autocast on ``device`` for ``bf16``, a disabled one for ``fp32``."""
    import torch

    return torch.autocast(device_type(device), dtype=torch.bfloat16, enabled=resolved(precision) == "bf16")


def choose(fp32_seconds: Sequence[float], bf16_seconds: Sequence[float], min_speedup: float = MIN_SPEEDUP) -> dict:
    """The faster precision from timed steps: bf16 when the fp32 median over the bf16 median reaches
    ``min_speedup``, else fp32 (equal speed keeps fp32: its arithmetic is the reference)."""
    fp32, bf16, speedup = _timed_speedup(
        fp32_seconds, bf16_seconds, ("fp32", "bf16"), "choose needs timings of both precisions"
    )
    return {
        "precision": "bf16" if speedup >= min_speedup else "fp32",
        "seconds": {"fp32": fp32, "bf16": bf16},
        "bf16_speedup": round(speedup, 3),
    }


def resolve_precision(
    requested: str,
    device: str,
    measure: Callable[[str], Sequence[float]],
    *,
    available: Callable[[str], bool] = bf16_available,
    min_speedup: float = MIN_SPEEDUP,
) -> dict[str, Any]:
    """The precision a job on ``device`` runs in, and why: ``{"precision", "precision_from", ...}``.

    ``requested`` is the config's value. ``fp32`` is taken as it is; ``bf16`` is refused where the device has no
    bf16 (a clear error rather than a slow emulation); ``auto`` times ``measure(precision)`` (seconds of each timed
    step) in both precisions where bf16 is available, and adds the medians and the speed-up."""
    if requested not in PRECISIONS:
        raise InputError(f"precision: '{requested}' is not one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return {"precision": "fp32", "precision_from": "config"}
    has_bf16 = available(device)
    if requested == "bf16":
        if not has_bf16:
            raise InputError(
                f"precision: bf16 was asked for, but {device} has no native bf16 (a CPU needs AVX512-BF16 or AMX); "
                "set precision to auto or fp32"
            )
        return {"precision": "bf16", "precision_from": "config"}
    if not has_bf16:
        return {"precision": "fp32", "precision_from": f"auto: {device_type(device)} has no native bf16"}
    decision = choose(measure("fp32"), measure("bf16"), min_speedup)
    return {
        "precision": decision["precision"],
        "precision_from": f"auto: timed, bf16 kept at a speed-up of at least {min_speedup:g}",
        "seconds_per_step": {k: round(v, 4) for k, v in decision["seconds"].items()},
        "bf16_speedup": decision["bf16_speedup"],
    }
