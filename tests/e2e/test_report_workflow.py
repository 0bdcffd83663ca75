"""End-to-end report: one run of the tiny configuration with the report's targets, then `snakemake --report`.

One pipeline run (about two minutes on 2 cores); the rest reads its outputs or asks Snakemake for reports.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
CONFIG = REPO / "tests" / "e2e" / "config.yaml"
RESULTS = "results/e2e"
CASES = [f"demo_{k:03d}" for k in range(6)]
TARGETS = [
    "all",
    f"{RESULTS}/metrics/seeds_table.tsv",
    f"{RESULTS}/report/seeds_table.html",
    f"{RESULTS}/report/metrics_boxplots.png",
    f"{RESULTS}/report/uncertainty_vs_dice.png",
    f"{RESULTS}/metrics/uncertainty_correlation.tsv",
    f"{RESULTS}/report/training_curves.png",
    f"{RESULTS}/report/configuration.yaml",
    f"{RESULTS}/report/configuration.html",
    *[f"{RESULTS}/report/previews/{case}.png" for case in CASES],
]
pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           "--configfile", str(CONFIG), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


@pytest.fixture(scope="module")
def workdir(tiny_run):
    assert "rules/report.smk" in SNAKEFILE.read_text(), "the Snakefile does not include rules/report.smk"
    return tiny_run


@pytest.fixture(scope="module")
def html_report(workdir):
    done = snakemake(workdir, "--report", str(workdir / "report.html"), *TARGETS)
    assert done.returncode == 0, done.stderr[-5000:]
    return (workdir / "report.html").read_text(encoding="utf-8")


def test_html_report_names_every_preview_and_plot(html_report):
    for case in CASES:
        assert f"{RESULTS}/report/previews/{case}.png" in html_report
    for name in ("seeds_table.html", "seeds_table.tsv", "metrics_boxplots.png", "uncertainty_vs_dice.png",
                 "training_curves.png", "configuration.html", "fold_0/curves.png", "failure_detection.tsv",
                 "risk_coverage.png"):  # fmt: skip
        assert name in html_report, name
    # captions are rendered into the report, with the configuration filled in
    assert "The seeds" in html_report and "three orthogonal slices" in html_report
    assert "Training of all 2 folds" in html_report
    assert "with a Dice below 0.7 (failed)" in html_report  # evaluate.failure_dice_threshold, by default
    assert '"Cases"' in html_report and '"Metrics"' in html_report


def test_zip_report_holds_the_previews(workdir, html_report):
    done = snakemake(workdir, "--report", str(workdir / "report.zip"), *TARGETS)
    assert done.returncode == 0, done.stderr[-5000:]
    with zipfile.ZipFile(workdir / "report.zip") as archive:
        names = archive.namelist()
        previews = [n for n in names if n.endswith(tuple(f"/{case}.png" for case in CASES))]
        assert len(previews) == len(CASES)
        assert archive.read(previews[0]).startswith(b"\x89PNG")


def test_seeds_table_agrees_with_the_cases(workdir):
    r = workdir / RESULTS
    cases = pd.read_csv(r / "metrics" / "cases.tsv", sep="\t")
    table = pd.read_csv(r / "metrics" / "seeds_table.tsv", sep="\t").set_index(["set", "label"])
    labels = ("organ", "lobe", "mean_foreground")
    assert set(table.index) == {(s, label) for s in ("cv", "test") for label in labels}
    for (set_name, label), group in cases.groupby(["set", "label"]):
        row = table.loc[(set_name, label)]
        assert row["cases"] == len(group)
        np.testing.assert_allclose(row["dice_mean"], group["dice"].mean(), rtol=1e-5)
        np.testing.assert_allclose(row["iou_sd"], group["iou"].std(ddof=1), rtol=1e-5)
    assert "±" in (r / "report" / "seeds_table.html").read_text(encoding="utf-8")


def test_uncertainty_correlation_is_scipys(workdir):
    r = workdir / RESULTS
    cases = pd.read_csv(r / "metrics" / "cases.tsv", sep="\t")
    dice = cases.groupby("case")["dice"].mean()
    scores = pd.concat([pd.read_csv(r / "uncertainty" / f"{c}.tsv", sep="\t") for c in dice.index])
    scores = scores.set_index("case")
    table = pd.read_csv(r / "metrics" / "uncertainty_correlation.tsv", sep="\t").set_index("score")
    row = table.loc["mean_normalised_entropy"]
    used = scores["foreground_voxels"] > 0
    assert row["cases"] == used.sum() >= 3
    expected = stats.spearmanr(scores.loc[used, "mean_normalised_entropy"], dice[used])
    np.testing.assert_allclose(row["spearman_rho"], expected.statistic, rtol=1e-5)


def test_every_case_has_a_preview_and_reruns_are_idle(workdir):
    r = workdir / RESULTS
    for case in CASES:
        data = (r / "report" / "previews" / f"{case}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and b"matplotlib" not in data.lower()
    again = snakemake(workdir, "--dry-run", "--cores", "2", *TARGETS)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
