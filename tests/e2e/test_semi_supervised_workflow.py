"""Semi-supervised training through the Snakefile (issue #19): the tiny demo with unlabelled cases and a mean
teacher, transductive (the test cases' images read too, never their labels); then the same run killed mid-training
and rerun gives the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    E2E_CONFIG,
    REPO,
    assert_env_boundary_held,
    digests,
    env_guard,
    env_guard_records,
    job_stats,
    run_snakemake,
)

pytestmark = pytest.mark.e2e
HANG_GUARD_S = 1800  # only so that a wedged run cannot hold CI forever; no timing is asserted
SEMI = {
    "demo": {**yaml.safe_load(E2E_CONFIG.read_text())["demo"], "n_unlabelled": 2},
    "semi_supervised": {"method": "mean_teacher", "unlabelled_per_batch": 1, "use_test_images": True},
}
TEST_CASES, UNLABELLED = ["demo_004", "demo_005"], ["demo_006", "demo_007"]


def _configs(workdir: Path) -> tuple[Path, Path]:
    extra = workdir / "semi.yaml"
    extra.write_text(yaml.safe_dump(SEMI))
    return E2E_CONFIG, extra


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("semi_run")
    guard = tmp_path_factory.mktemp("semi_run_env_guard")
    out = run_snakemake(workdir, "--cores", "2", configs=_configs(workdir), env=env_guard(guard))
    refused = "".join(f"{r['message']}\n" for r in env_guard_records(guard) if r["event"] == "blocked")
    assert out.returncode == 0, refused + out.stderr[-5000:]
    assert_env_boundary_held(guard, out.stdout + out.stderr)
    assert job_stats(out.stdout + out.stderr).get("preprocess_unlabelled") == 4
    return workdir


def test_unlabelled_and_test_images_train_the_mean_teacher_and_only_labelled_cases_are_scored(semi_run) -> None:
    results = semi_run / "results" / "e2e"
    read = sorted(p.name.removesuffix(".npz") for p in (results / "preprocessed" / "unlabelled").glob("*.npz"))
    assert read == TEST_CASES + UNLABELLED
    for name in read:  # the test cases have labels: training must not see them
        with np.load(results / "preprocessed" / "unlabelled" / f"{name}.npz", allow_pickle=False) as data:
            assert "label" not in data.files and data["image"].ndim == 4
    plans = json.loads((results / "plans.json").read_text())
    assert plans["training"]["semi_supervised"] == "mean_teacher" and plans["training"]["unlabelled_per_batch"] == 1
    for fold in (0, 1):
        config = json.loads((results / "models" / f"fold_{fold}" / "config.json").read_text())
        semi = config["semi_supervised"]
        assert semi["method"] == "mean_teacher" and semi["unlabelled_cases"] == TEST_CASES + UNLABELLED
        assert semi["saved"] == "teacher" and len(semi["student_val_dice"]) == 2
        assert config["val_dice"] == semi["teacher_val_dice"]
        assert not set(semi["unlabelled_cases"]) & {*config["train_cases"], *config["val_cases"]}
    # the unlabelled cases are never segmented, meshed, previewed or scored; the test cases are
    for case in UNLABELLED:
        assert (results / "nifti" / case / "image.nii.gz").is_file()
        for never in ("cv", "predictions", "uncertainty", "meshes", "report/previews", "metrics/cases", "dicom"):
            assert not list((results / never).glob(f"{case}*")), f"{never}/{case}"
    for case in TEST_CASES:
        assert (results / "predictions" / f"{case}.nii.gz").is_file()
    scored = pd.read_csv(results / "metrics" / "cases.tsv", sep="\t")
    assert set(scored["case"]) == {f"demo_{i:03d}" for i in range(6)}
    table = pd.read_csv(results / "report" / "training.tsv", sep="\t")
    assert table["method"].tolist() == ["mean_teacher"] * 2 and table["unlabelled_images"].tolist() == [4, 4]
    assert (table["cpu_min"] > 0).all() and table["student_val_dice"].notna().all()
    assert (
        "Unlabelled images: demo_004, demo_005, demo_006, demo_007"
        in (results / "report" / "training.html").read_text()
    )
    manifest = (results / "manifest.json").read_text()
    assert "demo_006" in manifest  # an input of the run, hashed with the others


# What the mean-teacher jobs write and read: the kill test runs to the models only (the steps after training are
# the supervised ones, whose resumption tests/robustness/test_kill_restart.py covers) and compares these.
TRAINING = ["splits.json", "plans.json", "nifti/*/image.nii.gz", "preprocessed/*.npz", "preprocessed/unlabelled/*.npz"]
TRAINING += ["models/*/config.json", "models/*/model.pt"]


def test_a_mean_teacher_run_killed_mid_training_reruns_to_the_same_bytes(semi_run, tmp_path) -> None:
    configs = _configs(tmp_path)
    models = [f"results/e2e/models/fold_{fold}/model.pt" for fold in (0, 1)]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", *map(str, configs), "--cores", "2", *models]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    results = tmp_path / "results" / "e2e"
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not list(results.glob("models/fold_*/checkpoint.pt")):
            assert proc.poll() is None, "the run ended before a fold's first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not all((tmp_path / m).exists() for m in models), "killed after both models: nothing was resumed"
    assert run_snakemake(tmp_path, "--unlock", configs=configs).returncode == 0
    rerun = run_snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", *models, configs=configs)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    logs = "".join(p.read_text() for p in (results / "logs" / "train_fold").glob("*.log"))
    assert "resumed from" in logs, "the fold killed after its checkpoint must resume from it"
    reference = digests(semi_run / "results" / "e2e", TRAINING)
    resumed = digests(results, TRAINING)
    assert set(resumed) == set(reference) and {"models/fold_0/model.pt", "preprocessed/unlabelled/demo_006.npz"} <= set(
        reference
    )
    differing = sorted(k for k in reference if reference[k] != resumed[k])
    assert not differing, f"differ from the uninterrupted run: {differing}"


def test_self_training_teaches_each_student_fold_with_its_own_teacher_fold(tmp_path) -> None:
    extra = tmp_path / "self.yaml"
    demo = {**SEMI["demo"], "n_test": 1}
    extra.write_text(yaml.safe_dump({"demo": demo, "semi_supervised": {"method": "self_training", "rounds": 2,
                                                                       "confidence_threshold": 0.5,
                                                                       "student_init": "teacher"}}))  # fmt: skip
    out = run_snakemake(tmp_path, "--cores", "2", configs=(E2E_CONFIG, extra))
    assert out.returncode == 0, out.stderr[-5000:]
    jobs = job_stats(out.stdout + out.stderr)
    assert jobs["train_round_fold"] == 4 and jobs["pseudo_label_fold"] == 4 and jobs["train_fold"] == 2
    assert jobs["preprocess_unlabelled"] == 2  # the rows of role unlabelled only (use_test_images is off)
    results = tmp_path / "results" / "e2e"
    for fold in (0, 1):
        for round_index in (0, 1):
            teacher = json.loads((results / "pseudo_labels" / f"round_{round_index}" / f"fold_{fold}" /
                                  "teacher.json").read_text())  # fmt: skip
            assert teacher["fold"] == fold and teacher["round"] == round_index
            expected = f"models/round_{round_index}/fold_{fold}/model.pt"
            assert teacher["model"].endswith(expected)
        round_0 = json.loads((results / "models" / "round_0" / f"fold_{fold}" / "config.json").read_text())
        assert "semi_supervised" not in round_0  # the first teacher is supervised
        final = json.loads((results / "models" / f"fold_{fold}" / "config.json").read_text())
        semi = final["semi_supervised"]
        assert semi["method"] == "self_training" and semi["teacher"]["fold"] == fold
        assert semi["teacher"]["round"] == 1 and semi["pseudo_labelled_images"] == 2
        assert final["train"]["pretrained"].endswith(f"models/round_1/fold_{fold}/model.pt")  # its own teacher
        assert final["train"]["pretrained_lr_scale"] == 1.0
    table = pd.read_csv(results / "report" / "training.tsv", sep="\t")
    assert table["stage"].tolist() == ["teacher round 0"] * 2 + ["teacher round 1"] * 2 + ["final"] * 2
    assert table["method"].tolist() == ["supervised"] * 2 + ["self_training"] * 4
    assert table["pseudo_kept"][:2].isna().all() and table["pseudo_kept"][2:].between(0, 1).all()
    assert (results / "cv" / "demo_000.nii.gz").is_file() and (results / "predictions" / "demo_004.nii.gz").is_file()
