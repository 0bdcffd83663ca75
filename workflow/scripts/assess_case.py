"""Snakemake adapter: calibration and uncertainty-error counts of one training case's cross-validation maps."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.calibration import assess_case_files

run_step(
    snakemake.log[0],
    assess_case_files,
    prediction=Path(snakemake.input.prediction),
    reference=Path(snakemake.input.reference),
    confidence=Path(snakemake.input.confidence),
    normalised_entropy=Path(snakemake.input.entropy),
    mutual_information=Path(snakemake.input.mutual_information),
    n_classes=int(snakemake.params.n_classes),
    out_reliability=Path(snakemake.output.reliability),
    out_errors=Path(snakemake.output.errors),
)
