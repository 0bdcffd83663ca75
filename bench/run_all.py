"""Run carve's benchmarks on this machine and write docs/benchmarks.md (the latest table of each).

    python bench/run_all.py                  # every quick benchmark (about 10 minutes on 2 cores), then the doc
    python bench/run_all.py --only bench_dag # one of them
    python bench/run_all.py --collect-only   # rebuild docs/benchmarks.md from bench/results/*.md

Each benchmark runs both sides of its comparison in the same process, alternating, and writes its own
bench/results/<name>.md; ratios are what to compare across machines, absolute times only on the same one.
Long measurements are run by hand: bench/train_hippocampus.py (carve's cross-validation Dice on hippocampus10,
run through the Snakefile as a user runs it; docs/training.md), bench/bench_training_quality.py (nnU-Net and that
same pipeline run at equal training budget), bench/bench_inference.py (ensemble inference against MONAI and
nnU-Net) and bench/bench_multidomain.py (shared against individual models); their results land in bench/results/
and are collected here too. bench/compare_hippocampus.py (run here: it trains nothing) pairs the hippocampus runs
case by case, with 95 % intervals.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

from machine import cpu_model

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
QUICK = (
    "bench_metrics",
    "bench_mesh",
    "bench_inference_memory",
    "bench_unlabelled_memory",
    "bench_dag",
    "bench_cuda_determinism",
    "bench_resampling",
    "bench_throughput",
    "compare_hippocampus",
)


def machine() -> str:
    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def run(name: str) -> None:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    argv = sys.argv
    sys.argv = [str(BENCH / f"{name}.py")]  # each benchmark's defaults, not run_all's arguments
    try:
        module.main()
    finally:
        sys.argv = argv


def source_script(stem: str) -> str:
    """The script that writes bench/results/<stem>.md: <stem>.py or bench_<stem>.py, else the same for the stem
    without its last ``_part`` (a second result of one script, e.g. inference_large.md of bench_inference.py)."""
    parts = stem.split("_")
    for n in range(len(parts), 0, -1):
        for name in ("_".join(parts[:n]), "bench_" + "_".join(parts[:n])):
            if (BENCH / f"{name}.py").is_file():
                return f"{name}.py"
    return f"bench_{stem}.py"


def collect() -> Path:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    parts = [
        "# Benchmarks\n",
        f"Written by `python bench/run_all.py` on {date.today()} (code {commit.stdout.strip() or 'unknown'}), "
        f"collected on: {machine()}. Each section names the machine it was measured on; each comparison ran both "
        "sides in one run, alternating, and reports ratios.\n",
    ]
    for result in sorted((BENCH / "results").glob("*.md")):
        text = result.read_text().strip()
        parts.append("#" + text if text.startswith("# ") else text)  # each result's title one level down
        parts.append(f"\n_Source: `bench/{source_script(result.stem)}`, result `bench/results/{result.name}`._\n")
    out = REPO / "docs" / "benchmarks.md"
    out.write_text("\n".join(parts) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=QUICK, help="run only these benchmarks")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild docs/benchmarks.md")
    args = parser.parse_args()
    if not args.collect_only:
        for name in args.only or QUICK:
            print(f"== {name}", flush=True)
            run(name)
    print(f"wrote {collect()}")


if __name__ == "__main__":
    main()
