"""Benchmark: one network over two datasets against one model per dataset, on the same folds (issue 9).

    CARVE_SHARED_DATA=../shared/data python bench/bench_multidomain.py [--epochs 4] [--only synthetic]

Runs the Snakefile (config ``datasets`` with ``individual_models: true``) on

* ``synthetic``: the demo generator's two intensity domains (T1-like ``t1`` labelling organ and lobe, T2-like
  ``t2`` labelling organ and duct), 6 + 6 training cases, 3 folds;
* ``real``: ``hippocampus10`` (MR, anterior and posterior hippocampus, 10 cases) and the two glioblastoma MR
  volumes of ``mr/pyradiomics`` (tumour), 2 folds stratified by dataset;

and once more with the multi-scale contrastive regulariser (``train.contrastive_weight``) for the shared model.
Every model trains the same number of iterations (``--epochs`` x 50), so shared and individual models get equal
compute. The table (per dataset: cross-validation Dice of the shared and the individual models, and of the shared
model with the regulariser) goes to bench/results/multidomain.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from machine import cpu_model

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

COMMON = {
    "seed": 0,
    "device": "cpu",
    "threads": 2,
    "plan": {"max_patch_voxels": 24 * 48 * 48, "base_channels": 16},
    "predict": {"overlap": 0.5, "projections": 0},
    "postprocess": {"operations": []},
    "mesh": {"format": "stl", "uncertainty_colour": False},
}


def synthetic_config(work: Path) -> dict:
    return {
        **COMMON,
        "cases": str(work / "data" / "cases.tsv"),
        "datasets": {"t1": {"labels": {1: "organ", 2: "lobe"}}, "t2": {"labels": {1: "organ", 2: "duct"}}},
        "folds": 3,
        "demo": {
            "n_train": 12,
            "n_test": 0,
            "seed": 0,
            "shape": [20, 48, 48],
            "spacing_mm": [3.0, 1.33, 1.33],
            "domains": ["t1", "t2"],
        },  # fmt: skip
    }


def real_config(work: Path, data: Path) -> dict:
    rows = ["case\timage\tlabel\trole\tdataset"]
    hippo = data / "hippocampus10"
    for image in sorted((hippo / "imagesTr").glob("*.nii.gz")):
        name = image.name.removesuffix(".nii.gz")
        rows.append(
            f"{name.replace('hippocampus_', 'hip')}\t{image}\t{hippo / 'labelsTr' / image.name}\ttrain\thippocampus"
        )
    tumours = sorted((data / "mr" / "pyradiomics").glob("brain*_image.nrrd"))
    for image in tumours:
        label = image.with_name(image.name.replace("_image", "_label"))
        rows.append(f"{image.name.split('_')[0]}\t{image}\t{label}\ttrain\ttumour")
    work.mkdir(parents=True, exist_ok=True)
    (work / "cases.tsv").write_text("\n".join(rows) + "\n")
    return {
        **COMMON,
        "cases": str(work / "cases.tsv"),
        "datasets": {"hippocampus": {"labels": {1: "anterior", 2: "posterior"}}, "tumour": {"labels": {1: "tumour"}}},
        "folds": 2,  # two tumour cases: each fold holds one out, its individual tumour model learns from the other
    }


def run(work: Path, config: dict, name: str) -> tuple[float, int]:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(path), "--cores", "2", "--rerun-incomplete"]  # fmt: skip
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if out.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed:\n{out.stderr[-4000:]}")
    return time.monotonic() - t, out.returncode


def shared_dice(results: Path, datasets: dict) -> dict[str, float]:
    cases = pd.read_csv(results / "metrics" / "cases.tsv", sep="\t")
    cases = cases[cases["set"] == "cv"].copy()
    sheet_datasets = datasets
    cases["dataset"] = cases["case"].map(sheet_datasets)
    per_case = cases.groupby(["dataset", "case"])["dice"].mean().groupby("dataset").mean()
    return per_case.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", choices=["synthetic", "real"], nargs="+", default=["synthetic", "real"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/carve-bench-multidomain"))
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "multidomain.md")
    args = parser.parse_args()
    data = os.environ.get("CARVE_SHARED_DATA")
    train = {"epochs": args.epochs, "time_budget_min": None, "iterations_per_epoch": 50}
    lines = []
    for setting in args.only:
        work = args.work / setting
        work.mkdir(parents=True, exist_ok=True)
        if setting == "synthetic":
            base = synthetic_config(work)
        else:
            if not data:
                raise SystemExit("set CARVE_SHARED_DATA to the shared data folder for the real datasets")
            base = real_config(work, Path(data))
        plain = {**base, "results": str(work / "plain"), "individual_models": True, "train": train}
        contrast = {**base, "results": str(work / "contrastive"), "individual_models": False,
                    "train": {**train, "contrastive_weight": 0.1}}  # fmt: skip
        seconds_plain, _ = run(work, plain, "plain")
        seconds_contrast, _ = run(work, contrast, "contrastive")
        table = pd.read_csv(work / "plain" / "metrics" / "datasets.tsv", sep="\t")
        sheet = pd.read_csv(Path(base["cases"]), sep="\t")
        case_datasets = dict(zip(sheet["case"], sheet["dataset"], strict=True))
        with_contrast = shared_dice(work / "contrastive", case_datasets)
        for row in table.itertuples():
            extra = f"{with_contrast.get(row.dataset, float('nan')):.3f}" if row.label == "mean_foreground" else ""
            lines.append(
                f"| {setting} | {row.dataset} | {row.label} | {row.cases} | {row.dice_shared:.3f} | "
                f"{row.dice_individual:.3f} | {row.dice_difference:+.3f} | {row.shared_better_cases} | {extra} |"
            )
        print(f"{setting}: {seconds_plain:.0f} s (shared + individual), {seconds_contrast:.0f} s (contrastive)")
    text = "\n".join(
        [
            "# Several datasets: one shared network against one model per dataset",
            "",
            f"Machine: {cpu_model()}, {os.cpu_count()} cores. `python bench/bench_multidomain.py --epochs "
            f"{args.epochs}`: every model {args.epochs * 50} iterations, same plans, network, folds and seeds; "
            "cross-validation Dice per dataset and label (mean over the dataset's cases, each predicted by a model "
            "that did not see it). 'shared better' counts the cases whose Dice the shared model raised. The last "
            "column is the shared model trained with the multi-scale contrastive regulariser (weight 0.1).",
            "",
            "| data | dataset | label | cases | shared | individual | difference | shared better "
            "| shared + contrastive |",
            "|---|---|---|---|---|---|---|---|---|",
            *lines,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
