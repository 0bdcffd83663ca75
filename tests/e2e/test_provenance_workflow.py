"""End-to-end provenance: one run of the tiny configuration, its manifest, and what a config change reruns.

One full run (about a minute on 2 cores); everything after it is a dry run or a check of the manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import job_stats

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "e2e" / "config.yaml"
pytestmark = pytest.mark.e2e

# Rules that record the whole resolved configuration, so any config change reruns them (once each).
CONFIG_RECORDERS = {"write_manifest": 1, "report_configuration": 1, "all": 1}
# Rules that read the meshes (the report's previews, one per case).
MESH_CONSUMERS = {"preview_case": 6}
# What a training key must rerun, and what it must not: everything before training.
AFTER_TRAINING = {"train_fold", "predict", "predict_cv", "evaluate", "summarise_metrics", "export_mesh"}
AFTER_TRAINING |= {"export_dicom_seg", *CONFIG_RECORDERS}
BEFORE_TRAINING = {"generate_demo", "convert_image", "convert_label", "plan", "split", "preprocess"}


def snakemake(workdir: Path, *args: str, configs: tuple[Path, ...] = (CONFIG,)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def verify(workdir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "carve.pipeline.provenance", "verify", "results/e2e/manifest.json"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def planned_jobs(dry: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run (empty when there is nothing to do)."""
    assert dry.returncode == 0, dry.stderr[-3000:]
    lines = (dry.stdout + dry.stderr).splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
        return {}
    return job_stats(dry.stdout + dry.stderr)


@pytest.fixture(scope="module")
def workdir(tiny_run_copy):
    return tiny_run_copy


def variant(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    return path


def test_manifest_records_the_run(workdir):
    manifest = json.loads((workdir / "results" / "e2e" / "manifest.json").read_text())
    assert manifest["config"]["mesh"]["smoothing_iterations"] == 4
    assert manifest["config"]["folds"] == 2
    outputs = set(manifest["outputs"])
    assert {"models/fold_0/model.pt", "models/fold_1/model.pt", "splits.json", "plans.json"} <= outputs
    assert {"predictions/demo_004.nii.gz", "cv/demo_000.nii.gz", "metrics/summary.tsv"} <= outputs
    assert not any(p.startswith(("logs/", "benchmarks/")) for p in outputs)
    # the demo's DICOM series and labels are the run's inputs: every file of each series
    assert sum(p.startswith("data/dicom/demo_000/") for p in manifest["inputs"]) == 12
    assert "data/labels/demo_000.nii.gz" in manifest["inputs"]
    assert manifest["packages"]["torch"]["installed"].startswith(manifest["packages"]["torch"]["locked"])
    assert manifest["code"]["git_commit"] is None or len(manifest["code"]["git_commit"]) == 40


def test_verify_is_clean_after_the_run(workdir):
    done = verify(workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout


def test_mesh_key_reruns_only_the_meshes_and_their_readers(workdir):
    mesh = variant(workdir, "mesh", "mesh: {smoothing_iterations: 2}\n")
    dry = snakemake(workdir, "--dry-run", "--cores", "2", configs=(CONFIG, mesh))
    assert planned_jobs(dry) == {"export_mesh": 6, **MESH_CONSUMERS, **CONFIG_RECORDERS}
    assert "Params have changed since last execution" in dry.stdout + dry.stderr


def test_training_key_reruns_training_and_what_follows(workdir):
    train = variant(workdir, "train", "train: {learning_rate: 0.003}\n")
    jobs = planned_jobs(snakemake(workdir, "--dry-run", "--cores", "2", configs=(CONFIG, train)))
    assert set(jobs) >= AFTER_TRAINING, f"missing: {AFTER_TRAINING - set(jobs)}"
    assert not set(jobs) & BEFORE_TRAINING, f"would rerun: {set(jobs) & BEFORE_TRAINING}"
    assert jobs["train_fold"] == 2 and jobs["predict_cv"] == 4 and jobs["export_mesh"] == 6


def test_a_budget_key_re_plans_the_count_and_reruns_what_reads_the_plans(workdir):
    budget = variant(workdir, "budget", "train: {epochs: 3}\n")  # plans.json records the count
    jobs = planned_jobs(snakemake(workdir, "--dry-run", "--cores", "2", configs=(CONFIG, budget)))
    assert set(jobs) >= AFTER_TRAINING | {"plan", "preprocess"}
    assert not set(jobs) & {"generate_demo", "convert_image", "convert_label", "split"}


def test_unchanged_config_has_nothing_to_do(workdir):
    assert planned_jobs(snakemake(workdir, "--dry-run", "--cores", "2")) == {}


def test_tampered_prediction_is_reported(workdir):
    path = workdir / "results" / "e2e" / "predictions" / "demo_004.nii.gz"
    original, stat = path.read_bytes(), path.stat()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        done = verify(workdir)
        assert done.returncode == 1
        assert "changed  output predictions/demo_004.nii.gz" in done.stdout
        assert "1 file(s) drifted" in done.stdout
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert verify(workdir).returncode == 0
