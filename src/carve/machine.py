"""What the CPU is and what it can do, read at run time (never assumed): its model name and the instruction-set
features that change carve's speed or arithmetic (vector width, bf16 and matrix units). Torch-free; Linux reads
``/proc/cpuinfo``, other systems get what the platform module knows."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# Features that decide which kernels oneDNN can use (fp32 vector width, bf16 dot products, AMX tiles).
FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def _cpuinfo(path: Path = CPUINFO) -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (empty where there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if entries:
                break
            continue
        key, _, value = line.partition(":")
        entries.setdefault(key.strip(), value.strip())
    return entries


def cpu_model(path: Path = CPUINFO) -> str:
    """The CPU's model name, else what the platform module knows."""
    info = _cpuinfo(path)
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_features(path: Path = CPUINFO) -> list[str]:
    """Those of :data:`FEATURES` the CPU reports (``flags`` on x86, ``Features`` on Arm), in that order."""
    info = _cpuinfo(path)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in FEATURES if f in flags]


def bf16_units(features: list[str]) -> str:
    """The CPU's bf16 hardware: ``amx`` (matrix tiles), ``avx512_bf16`` (vector dot products) or ``none``."""
    if "amx_bf16" in features:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in features else "none"


def describe() -> dict[str, Any]:
    """The machine as the manifest records it: CPU model, its features, bf16 units, logical CPUs usable here."""
    features = cpu_features()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_features": features,
        "bf16_units": bf16_units(features),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "architecture": platform.machine(),
    }
