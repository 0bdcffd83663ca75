"""carve as a Snakemake `module` of another workflow (the README's example), planned by a dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, job_stats


def test_carve_runs_as_a_module_of_another_workflow(tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(
        f"""configfile: "config.yaml"

module carve:
    snakefile: "{REPO / "Snakefile"}"
    config: config

use rule * from carve as carve_*

rule all:
    input: rules.carve_all.input
    default_target: True
"""
    )
    config = {
        "cases": str(tmp_path / "data" / "cases.tsv"),
        "results": "results/module",
        "labels": {1: "organ", 2: "lobe"},
        "folds": 2,
        "demo": {"n_train": 4, "n_test": 1, "seed": 0, "shape": [12, 24, 24], "spacing_mm": [3.0, 1.5, 1.5]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = job_stats(run.stdout + run.stderr)
    assert jobs["carve_train_fold"] == 2 and jobs["carve_convert_image"] == 5 and jobs["carve_predict"] == 1
