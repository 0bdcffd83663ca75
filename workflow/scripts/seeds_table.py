"""Snakemake adapter: the seeds' table (mean ± SD per set and label) as TSV and HTML."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.report import write_seeds_table

run_step(
    snakemake.log[0],
    write_seeds_table,
    Path(snakemake.input.cases),
    Path(snakemake.output.table),
    Path(snakemake.output.html),
)
