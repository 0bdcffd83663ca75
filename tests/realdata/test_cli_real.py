"""`carve init` on the real hippocampus set (MSD layout, no dataset.json) and a Snakemake dry run of the result."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import job_stats

from carve.pipeline.sheet import load_sheet

pytestmark = pytest.mark.realdata


def test_init_hippocampus10_and_dry_run(shared_data, tmp_path):
    folder = shared_data / "hippocampus10"
    carve = [sys.executable, "-m", "carve.pipeline.cli"]
    init = subprocess.run([*carve, "init", str(folder)], capture_output=True, text=True, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "label names made up from the label files' values [1, 2]" in init.stderr
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["labels"] == {1: "label_1", 2: "label_2"}  # the values the ten label files hold
    assert config["modality"] == "MR" and config["results"] == "results/hippocampus10" and "folds" not in config
    cases = load_sheet(tmp_path / "cases.tsv")
    expected = sorted(p.name.removesuffix(".nii.gz") for p in (folder / "imagesTr").glob("hippocampus_*.nii.gz"))
    assert len(expected) == 10 and [c.case for c in cases] == expected
    assert all(c.role == "train" and c.label == folder / "labelsTr" / c.image.name for c in cases)

    run = [*carve, "run", "--configfile", "config.yaml", "--", "--dry-run"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = job_stats(done.stdout + done.stderr)
    assert jobs["convert_image"] == 10 and jobs["convert_label"] == 10 and jobs["evaluate"] == 10
    assert jobs["train_fold"] == 5 and jobs["predict_cv"] == 10
    assert all(f"case={c}" in done.stdout + done.stderr for c in expected)
