"""Snakemake adapter: the learning curve's table, summary over draws and figure."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.learning_curve import write_learning_curve

run_step(
    snakemake.log[0],
    write_learning_curve,
    [Path(p) for p in snakemake.input.tables],
    Path(snakemake.output.table),
    Path(snakemake.output.summary),
    Path(snakemake.output.plot),
)
