"""Config and sheet problems are clear errors when the workflow is parsed, before any job runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from carve.imaging.io import Geometry, write_image

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({"cases": "x", "labels": {1: "a"}}))
    path = workdir / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(path), "--dry-run", "--cores", "1"]  # fmt: skip
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir)


@pytest.fixture
def data(tmp_path):
    g = Geometry((2.0, 1.0, 1.0))
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}_img.nii.gz", np.zeros((4, 4, 4), np.float32), g)
        write_image(tmp_path / f"{name}_lab.nii.gz", np.zeros((4, 4, 4), np.uint8), g)
    return tmp_path


def sheet(path: Path, rows: list[tuple[str, str, str, str]]) -> str:
    path.write_text("case\timage\tlabel\trole\n" + "".join("\t".join(r) + "\n" for r in rows))
    return str(path)


def test_valid_sheet_dry_runs(data):
    rows = [(n, f"{n}_img.nii.gz", f"{n}_lab.nii.gz", "train") for n in "abc"]
    out = dry_run(data, {"cases": sheet(data / "s.tsv", rows), "labels": {1: "a"}, "folds": 3})
    assert out.returncode == 0, out.stdout[-2000:]
    assert "train_fold" in out.stdout


def test_unknown_config_key(data):
    rows = [(n, f"{n}_img.nii.gz", f"{n}_lab.nii.gz", "train") for n in "abc"]
    out = dry_run(data, {"cases": sheet(data / "s.tsv", rows), "labels": {1: "a"}, "fodls": 3})
    assert out.returncode != 0
    assert "fodls" in out.stdout and "Additional properties" in out.stdout


def _datasets_sheet(data, rows):
    path = data / "cases.tsv"
    path.write_text("case\timage\tlabel\trole\tdataset\n" + "".join("\t".join(r) + "\n" for r in rows))
    return str(path)


DATASETS = {"knee": {"labels": {1: "femur"}}, "ankle": {"labels": {1: "talus", 2: "femur"}}}


def test_datasets_plan_one_network_and_a_sheet_error_stops_the_parse(data):
    """The rule engine's side of tests/unit/test_run_config.py: a resolution error is Snakemake's error."""
    rows = [(n, f"{n}_img.nii.gz", f"{n}_lab.nii.gz", "train", d) for n, d in (("a", "knee"), ("b", "ankle"))]
    rows.append(("c", "c_img.nii.gz", "c_lab.nii.gz", "train", ""))
    out = dry_run(data, {"cases": _datasets_sheet(data, rows), "datasets": DATASETS, "folds": 2})
    assert out.returncode != 0 and "row 4, case 'c': column dataset: no dataset" in out.stdout, out.stdout[-2000:]
    rows[2] = ("c", "c_img.nii.gz", "c_lab.nii.gz", "train", "knee")
    out = dry_run(data, {"cases": _datasets_sheet(data, rows), "datasets": DATASETS, "folds": 2})
    assert out.returncode == 0, out.stdout[-3000:]
    assert "train_fold" in out.stdout and "train_individual_fold" not in out.stdout


def test_a_users_config_does_not_inherit_the_demo(data):
    """The Snakefile's own config/config.yaml (the demo) is read only when no --configfile is given."""
    rows = [(n, f"{n}_img.nii.gz", f"{n}_lab.nii.gz", "train") for n in ("a", "b")]
    config = {"cases": sheet(data / "cases.tsv", rows), "labels": {1: "a"}, "folds": 2}
    (data / "config").mkdir(exist_ok=True)
    demo = {"cases": "results/demo/data/cases.tsv", "labels": {1: "organ"}, "demo": {"n_train": 3, "n_test": 0}}
    (data / "config" / "config.yaml").write_text(yaml.safe_dump(demo))
    path = data / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(data),
           "--configfile", str(path), "--dry-run", "--cores", "1"]  # fmt: skip
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=data)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "generate_demo" not in out.stdout and "convert_image" in out.stdout
