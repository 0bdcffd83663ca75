"""Snakemake adapter: every case ranked by a case score (the configured one, or with `auto` the one that detects
failures best on the cross-validation), the likely wrong ones flagged for review."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.calibration import review_files

run_step(
    snakemake.log[0],
    review_files,
    [Path(p) for p in snakemake.input.scores],
    Path(snakemake.input.cases),
    list(snakemake.params.cv_cases),
    str(snakemake.params.score),
    float(snakemake.params.quantile),
    Path(snakemake.output.review),
    Path(snakemake.input.failures),
    Path(snakemake.output.choice),
    test_failures_out=Path(snakemake.output.test_failures),
    dice_threshold=float(snakemake.params.dice_threshold),
)
