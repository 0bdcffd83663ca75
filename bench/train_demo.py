"""Benchmark: 5-fold cross-validation of the default recipe on the synthetic demo, for a few budgets.

    python bench/train_demo.py [--epochs 2 6] [--folds 5]

The demo (config/config.yaml's generator: 9 training cases, anisotropic oblique MR-like DICOM) is run through the
Snakefile up to the fold models, once per budget (``train.epochs`` x 50 iterations: equal compute whatever else
the machine runs). Each fold's validation Dice is that of its final model on its held-out cases on the plan grid
(``model.pt``'s ``val_dice``, the same figure train_hippocampus.py reports). The table goes to
bench/results/train_demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from machine import cpu_model

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/carve-bench-demo"))
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "train_demo.md")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from carve.training.network import load_model

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    rows = []
    for epochs in args.epochs:
        work = args.work / f"e{epochs}"
        work.mkdir(parents=True, exist_ok=True)
        config = {**base, "cases": str(work / "data" / "cases.tsv"), "results": str(work), "folds": args.folds}
        config["train"] = {**base.get("train", {}), "iterations": None, "epochs": epochs, "time_budget_min": None}
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        models = [str(work / "models" / f"fold_{k}" / "model.pt") for k in range(args.folds)]
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--cores", "2", *models]  # fmt: skip
        t = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-4000:])
        print(f"epochs {epochs}: {time.monotonic() - t:.0f} s", flush=True)
        labels = [v for _, v in sorted(base["labels"].items())]
        for k, path in enumerate(models):
            _, extra = load_model(path)
            seconds = json.loads(Path(path).with_name("curves.tsv").read_text().splitlines()[-1].split("\t")[2])
            rows.append((epochs, k, int(extra["iterations"]), float(seconds), [float(d) for d in extra["val_dice"]]))
    lines = [
        "# Synthetic demo: 5-fold cross-validation of the default recipe",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores. `python bench/train_demo.py`: the demo's 9 training cases "
        f"({args.folds} folds, so 7-8 training cases per fold), the default recipe, budgets as iterations; Dice of "
        "each fold's final model on its held-out cases (plan grid). Seconds: the fold's training time in this run.",
        "",
        "| iterations | fold | seconds | " + " | ".join(f"Dice {n}" for n in labels) + " | mean |",
        "|---|---|---|" + "---|" * len(labels) + "---|",
    ]
    for epochs in args.epochs:
        mine = [r for r in rows if r[0] == epochs]
        for _, k, its, seconds, dice in mine:
            lines.append(
                f"| {its} | {k} | {seconds:.0f} | " + " | ".join(f"{d:.3f}" for d in dice) + f" | {np.mean(dice):.3f} |"
            )
        mean = np.nanmean([r[4] for r in mine], axis=0)
        lines.append(
            f"| **{mine[0][2]}** | **mean** | {np.mean([r[3] for r in mine]):.0f} | "
            + " | ".join(f"{d:.3f}" for d in mean)
            + f" | **{np.mean(mean):.3f}** |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
