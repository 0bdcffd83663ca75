"""Snakemake adapter: pooled calibration, uncertainty-error overlap, score correlations and failure detection on
cross-validation."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.calibration import summarise_assessment_files

run_step(
    snakemake.log[0],
    summarise_assessment_files,
    [Path(p) for p in snakemake.input.reliability],
    [Path(p) for p in snakemake.input.errors],
    [Path(p) for p in snakemake.input.scores],
    Path(snakemake.input.cases),
    list(snakemake.params.cv_cases),
    {k: Path(v) for k, v in snakemake.output.items()},
    float(snakemake.params.failure_dice_threshold),
)
