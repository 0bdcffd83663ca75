"""Reproducible by default: the tiny configuration run twice from scratch gives the same bytes, and a time budget
becomes a count of iterations in plans.json that training runs exactly (and a user may edit)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import E2E_CONFIG, REPO, REPRODUCIBLE, digests, run_snakemake

from carve.pipeline.provenance import load_manifest, manifest_differences
from carve.training.budget import on_grid
from carve.training.network import load_payload
from carve.training.precision import bf16_available

pytestmark = pytest.mark.e2e
# Every result the issue on reproducibility names, beyond REPRODUCIBLE: raw predictions, every mesh format, the
# postprocessing decisions, the assessment tables and the bundle. DICOM-SEG objects get new UIDs by design.
EVERY = [*REPRODUCIBLE, "cv_raw/*", "predictions_raw/*", "meshes/**/*.*", "postprocessing.json", "assessment/*.tsv"]
EVERY += ["bundle/**/*.*", "uncertainty/**/*.*", "members.json", "members/*", "inference_precision.json"]
# New UIDs and creation times in every DICOM-SEG object; elapsed seconds in a fold's curves and checkpoint, and the
# training jobs' minutes in the report's training summary.
ALLOWED_TO_DIFFER = re.compile(r"dicom/.*|models/[^/]+/(checkpoint\.pt|curves\.(tsv|png))|report/training\.(tsv|html)")


def _fresh(tmp_path: Path, name: str) -> Path:
    workdir = tmp_path / name
    workdir.mkdir()
    shutil.copytree(REPO / "config", workdir / "config")
    return workdir


def test_a_second_run_from_scratch_gives_the_same_bytes(tiny_run, tmp_path):
    workdir = _fresh(tmp_path, "again")
    done = run_snakemake(workdir, "--cores", "2")
    assert done.returncode == 0, done.stderr[-5000:]
    first = digests(tiny_run / "results" / "e2e", EVERY)
    second = digests(workdir / "results" / "e2e", EVERY)
    differing = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert not differing, f"{len(differing)} of {len(first)} results differ: {differing[:20]}"
    assert len(first) > 60 and {"plans.json", "models/fold_0/model.pt", "cv/demo_000.nii.gz"} <= set(first)
    rows = manifest_differences(
        load_manifest(tiny_run / "results" / "e2e" / "manifest.json"),
        load_manifest(workdir / "results" / "e2e" / "manifest.json"),
    )
    unexpected = [str(r) for r in rows if r.section != "outputs" or not ALLOWED_TO_DIFFER.fullmatch(r.key)]
    assert not unexpected, unexpected
    assert any(r.key.startswith("dicom/") for r in rows)  # the comparison sees files that do differ


def test_a_time_budget_becomes_the_planned_count_and_an_edited_count_is_trained(tmp_path):
    workdir = _fresh(tmp_path, "budget")
    budget = workdir / "budget.yaml"
    budget.write_text("train: {epochs: null, time_budget_min: 0.05, precision: auto}\n")
    model = workdir / "results" / "e2e" / "models" / "fold_0" / "model.pt"
    target = str(model.relative_to(workdir))
    done = run_snakemake(workdir, "--cores", "2", target, configs=(E2E_CONFIG, budget))
    assert done.returncode == 0, done.stderr[-5000:]
    plans_path = workdir / "results" / "e2e" / "plans.json"
    plans = json.loads(plans_path.read_text())
    training = plans["training"]
    assert training["from"] == "time_budget_min" and training["time_budget_min"] == 0.05
    assert training["seconds_per_iteration"] == on_grid(training["seconds_per_iteration"])
    assert training["iterations"] == math.floor(3.0 / training["seconds_per_iteration"] + 1e-9)
    assert training["threads"] == 1 and training["device"] == "cpu"
    assert training["precision"] in ("fp32", "bf16") and training["precision_from"].startswith("auto")
    assert load_payload(model)["extra"]["iterations"] == training["iterations"]
    log = (workdir / "results" / "e2e" / "logs" / "plan" / "plan.log").read_text()
    assert "training step" in log and f"-> {training['iterations']} iterations" in log
    if bf16_available("cpu"):  # both precisions timed, the medians logged (not in plans.json: its bytes stay put)
        assert "precision auto: training step" in log and "in bf16" in log
    fold = json.loads((model.parent / "config.json").read_text())
    assert fold["train"]["iterations"] == training["iterations"] and fold["runtime"]["threads"] == 1
    assert fold["train"]["precision"] == fold["runtime"]["precision"] == training["precision"]
    assert fold["train"]["channels_last"] == fold["runtime"]["channels_last"] == training["channels_last"]
    assert "memory format auto: training step" in log  # a time budget: the layout was timed too

    plans["training"]["iterations"] = 6  # a user's edit: training follows it
    plans_path.write_text(json.dumps(plans, indent=2) + "\n")
    done = run_snakemake(workdir, "--cores", "2", target, configs=(E2E_CONFIG, budget))
    assert done.returncode == 0, done.stderr[-5000:]
    assert load_payload(model)["extra"]["iterations"] == 6


@pytest.mark.skipif(not bf16_available("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_training_and_prediction_give_the_same_bytes_twice(tmp_path):
    """bf16 is as reproducible as fp32 on one machine: training and prediction in bf16, run twice from scratch,
    give the same models, decisions, raw predictions and uncertainty maps; the run records the precision."""
    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text("train: {precision: bf16}\npredict: {precision: bf16}\n")
    targets = [f"results/e2e/{p}" for p in ("predictions_raw/demo_004.nii.gz", "cv_raw/demo_000.nii.gz")]
    patterns = ["models/*/model.pt", "models/*/config.json", "plans.json", "members.json", "inference_precision.json"]
    patterns += ["predictions_raw/*", "cv_raw/*", "uncertainty/**/*.*"]
    runs = []
    for name in ("bf16_first", "bf16_second"):
        workdir = _fresh(tmp_path, name)
        done = run_snakemake(workdir, "--cores", "2", *targets, configs=(E2E_CONFIG, bf16))
        assert done.returncode == 0, done.stderr[-5000:]
        runs.append(workdir / "results" / "e2e")
    first, second = digests(runs[0], patterns), digests(runs[1], patterns)
    assert {"models/fold_0/model.pt", "predictions_raw/demo_004.nii.gz", "uncertainty/demo_004.nii.gz"} <= set(first)
    differing = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert not differing, differing
    decision = json.loads((runs[0] / "inference_precision.json").read_text())
    assert decision["precision"] == "bf16" and decision["precision_from"] == "config"
    fold = json.loads((runs[0] / "models" / "fold_0" / "config.json").read_text())
    assert fold["runtime"]["precision"] == "bf16"
    log = (runs[0] / "logs" / "predict" / "demo_004.log").read_text()
    assert "forward passes in bf16" in log
