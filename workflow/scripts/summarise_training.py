"""Snakemake adapter: how each training job went and what it cost (report/training.tsv and .html)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.evaluation.report import write_training_summary
from carve.pipeline.workflow import run_step

run_step(
    snakemake.log[0],
    write_training_summary,
    [dict(stage) for stage in snakemake.params.stages],
    Path(snakemake.output.table),
    Path(snakemake.output.html),
)
