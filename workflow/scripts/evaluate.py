"""Snakemake adapter: per-label metrics of one case against its reference."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.evaluate import evaluate_case_to_file

run_step(
    snakemake.log[0],
    evaluate_case_to_file,
    snakemake.wildcards.case,
    snakemake.params.set,
    Path(snakemake.input.reference),
    Path(snakemake.input.prediction),
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    float(snakemake.params.tolerance_mm),
    Path(snakemake.output.table),
)
