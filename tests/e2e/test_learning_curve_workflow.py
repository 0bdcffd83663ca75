"""End-to-end learning curve: the tiny synthetic demo with ``learning_curve: {sizes: [2, 3], draws: 2}``.

A dry run of ``all`` shows the learning-curve jobs; then only the learning-curve outputs are built (plan,
preprocessing and four tiny models, no folds) and ``snakemake --report`` is asked for them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, job_stats, run_snakemake

pytestmark = pytest.mark.e2e
RESULTS = "results/lc"
SIZES, DRAWS = (2, 3), 2
TARGETS = [f"{RESULTS}/learning_curve/learning_curve.tsv", f"{RESULTS}/report/learning_curve.png"]
# The tiny settings of tests/e2e/config.yaml, in a results folder of its own.
CONFIG = {
    "cases": f"{RESULTS}/data/cases.tsv",
    "results": RESULTS,
    "labels": {1: "organ", 2: "lobe"},
    "modality": "MR",
    "folds": 2,
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "demo": {"n_train": 4, "n_test": 2, "seed": 1, "shape": [12, 32, 32], "spacing_mm": [3.0, 1.2, 1.2]},
    "plan": {"max_patch_voxels": 8192, "base_channels": 4, "max_channels": 16, "batch_size": 2},
    "train": {"epochs": 2, "iterations_per_epoch": 4, "time_budget_min": None},
    "predict": {"overlap": 0.25},
    "learning_curve": {"sizes": list(SIZES), "draws": DRAWS},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("learning_curve")
    shutil.copytree(REPO / "config", workdir / "config")
    (workdir / "lc.yaml").write_text(yaml.safe_dump(CONFIG))
    return workdir


@pytest.fixture(scope="module")
def built(workdir) -> Path:
    done = run_snakemake(workdir, "--cores", "2", *TARGETS, configs=(workdir / "lc.yaml",))
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir / RESULTS


def test_all_includes_the_learning_curve(workdir):
    dry = run_snakemake(workdir, "--dry-run", "--cores", "2", configs=(workdir / "lc.yaml",))
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = job_stats(dry.stdout + dry.stderr)
    assert jobs.get("draw_learning_curve_subsets") == DRAWS and jobs.get("summarise_learning_curve") == 1
    assert jobs.get("train_learning_curve_model") == len(SIZES) * DRAWS
    assert jobs.get("evaluate_learning_curve_model") == len(SIZES) * DRAWS


def test_subsets_models_and_per_case_metrics(built):
    entries = []
    for draw in range(DRAWS):
        document = json.loads((built / "learning_curve" / "subsets" / f"draw{draw}.json").read_text())
        assert document["sizes"] == list(SIZES) and document["draw"] == draw
        entries += document["subsets"]
    assert len(entries) == len(SIZES) * DRAWS
    for entry in entries:
        n, draw = entry["n"], entry["draw"]
        evaluated = entry["held_out"] + entry["test"]
        assert len(entry["train"]) == n and not set(entry["train"]) & set(evaluated)
        assert len(entry["held_out"]) == 4 - max(SIZES) and len(entry["test"]) == 2
        run = built / "learning_curve" / f"n{n}_draw{draw}"
        assert (run / "model.pt").is_file()
        assert json.loads((run / "config.json").read_text())["train_cases"] == entry["train"]
        metrics = pd.read_csv(run / "metrics.tsv", sep="\t")
        assert sorted(metrics["case"].unique()) == sorted(evaluated)
        assert set(metrics["n"]) == {n} and set(metrics["draw"]) == {draw}
        assert metrics["dice"].between(0, 1).all()
        assert sorted(p.name for p in (run / "predictions").glob("*.nii.gz")) == sorted(
            f"{c}.nii.gz" for c in evaluated
        )


def test_curve_table_summary_and_figure(built):
    curve = pd.read_csv(built / "learning_curve" / "learning_curve.tsv", sep="\t")
    assert len(curve) == len(SIZES) * DRAWS * 3  # organ, lobe, mean_foreground
    assert set(curve["label"]) == {"organ", "lobe", "mean_foreground"}
    assert sorted(set(zip(curve["n"], curve["draw"], strict=True))) == [(n, d) for n in SIZES for d in range(DRAWS)]
    assert (curve["cases"] == 3).all()
    assert curve["dice_mean"].between(0, 1).all() and curve["nsd_mean"].between(0, 1).all()
    summary = pd.read_csv(built / "learning_curve" / "summary.tsv", sep="\t")
    assert len(summary) == len(SIZES) * 3 and (summary["draws"] == DRAWS).all()
    assert summary["dice_mean"].between(0, 1).all()
    png = (built / "report" / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_report_shows_the_learning_curve(built, workdir):
    report = workdir / "report.html"
    done = run_snakemake(workdir, "--report", str(report), *TARGETS, configs=(workdir / "lc.yaml",))
    assert done.returncode == 0, done.stderr[-5000:]
    page = report.read_text(encoding="utf-8")
    assert "learning_curve.png" in page and "Learning curve" in page
