"""The CPU model line every benchmark's machine description starts from: carve's own reader (carve.machine)."""

from carve.machine import cpu_model  # noqa: F401  (re-exported for the benchmarks)
