"""Benchmark: train carve's U-Net on hippocampus10 folds and report full-volume validation Dice.

    CARVE_SHARED_DATA=/work/shared/data python bench/train_hippocampus.py --budget-min 3 --folds 0

Preprocessing is deliberately simple (1 mm data already): per-image z-score over all voxels. Folds: 5-fold split
of the 10 cases in sorted order (8 train / 2 validation). Prints one line per fold and a JSON summary; extra
``--set key=value`` options override TrainConfig / AugmentConfig / NetworkConfig fields for recipe experiments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from carve.augment import AugmentConfig
from carve.io import read_image
from carve.network import NetworkConfig, forward_flops, load_model, plan_topology
from carve.train import TrainConfig, dice_per_label, predict_volume, train_fold


def load_cases(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    cases = []
    for path in sorted((folder / "imagesTr").glob("*.nii.gz")):
        image, _ = read_image(path)
        label, _ = read_image(folder / "labelsTr" / path.name)
        image = image.astype(np.float32)
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
        cases.append((path.name.removesuffix(".nii.gz"), image[None], label.astype(np.uint8)))
    if len(cases) < 5:
        raise SystemExit(f"{folder}: expected 10 hippocampus cases, found {len(cases)}")
    return cases


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args: argparse.Namespace) -> TrainConfig:
    overrides = dict(kv.split("=", 1) for kv in args.set)
    patch = tuple(parse_value(overrides.pop("patch_size", json.dumps(list(TrainConfig.patch_size)))))
    max_stages = int(overrides.pop("max_stages", 4))
    strides, kernels = plan_topology(patch, (1.0, 1.0, 1.0), max_stages=max_stages)
    groups: dict[str, dict] = {"train": {}, "augment": {}, "network": {}}
    fields = {
        "augment": {f.name for f in dataclasses.fields(AugmentConfig)},
        "network": {f.name for f in dataclasses.fields(NetworkConfig)},
    }
    for key, value in overrides.items():
        group = next((g for g, names in fields.items() if key in names), "train")
        v = parse_value(value)
        groups[group][key] = tuple(v) if isinstance(v, list) else v
    network = NetworkConfig(
        in_channels=1, n_classes=3, strides=tuple(strides), kernel_sizes=tuple(kernels), **groups["network"]
    )
    return TrainConfig(
        time_budget_min=args.budget_min,
        epochs=args.epochs,
        patch_size=patch,
        seed=args.seed,
        augment=AugmentConfig(**groups["augment"]),
        network=network,
        **groups["train"],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/carve-bench-hippocampus"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    data = os.environ.get("CARVE_SHARED_DATA")
    if not data:
        raise SystemExit("set CARVE_SHARED_DATA to the shared data folder (it holds hippocampus10/)")
    cases = load_cases(Path(data) / "hippocampus10")
    config = build_config(args)
    flops = 3 * config.batch_size * forward_flops(config.network, config.patch_size)
    print(
        f"network {config.network.channels} strides {config.network.strides}; "
        f"{flops / 1e9:.1f} GFLOP per training iteration",
        flush=True,
    )
    results = []
    for fold in args.folds:
        val_idx = {2 * fold % len(cases), (2 * fold + 1) % len(cases)}
        train = [(img, lab) for i, (_, img, lab) in enumerate(cases) if i not in val_idx]
        val = [cases[i] for i in sorted(val_idx)]
        out_dir = args.out / f"fold{fold}"
        for name in ("checkpoint.pt", "model.pt"):
            (out_dir / name).unlink(missing_ok=True)
        t = time.monotonic()
        cpu = time.process_time()
        model_path = train_fold(train, [(img, lab) for _, img, lab in val], config, out_dir, threads=args.threads)
        seconds = time.monotonic() - t
        cpu_seconds = time.process_time() - cpu  # all threads: 2 cores busy for 60 s = 120 CPU-seconds
        model, extra = load_model(model_path)
        scores = [
            dice_per_label(predict_volume(model, img, config.patch_size).argmax(0), lab, 3) for _, img, lab in val
        ]
        dice = np.mean(scores, axis=0)
        results.append(
            {
                "fold": fold,
                "iterations": extra["iterations"],
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu_seconds, 1),
                "dice": [round(float(d), 4) for d in dice],
                "mean_dice": round(float(dice.mean()), 4),
            }
        )
        print(
            f"fold {fold}: {extra['iterations']} iterations in {seconds:.0f} s ({cpu_seconds:.0f} CPU-s), "
            f"Dice anterior {dice[0]:.3f} "
            f"posterior {dice[1]:.3f} mean {dice.mean():.3f}",
            flush=True,
        )
    mean = float(np.mean([r["mean_dice"] for r in results]))
    print(json.dumps({"overrides": args.set, "budget_min": args.budget_min, "folds": results, "mean_dice": mean}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
