"""Snakemake adapter: how each fold trained and what it cost (report/training.tsv and .html)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.evaluation.report import write_training_summary
from carve.pipeline.workflow import run_step

folds = [int(f) for f in snakemake.params.folds]
run_step(
    snakemake.log[0],
    write_training_summary,
    dict(zip(folds, map(Path, snakemake.input.configs), strict=True)),
    dict(zip(folds, map(Path, snakemake.input.benchmarks), strict=True)),
    Path(snakemake.output.table),
    Path(snakemake.output.html),
)
