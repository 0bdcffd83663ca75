"""Snakemake adapter: gather per-case metrics into cases.tsv and summary.tsv."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.evaluate import summarise_files

run_step(
    snakemake.log[0],
    summarise_files,
    [Path(p) for p in snakemake.input.tables],
    Path(snakemake.output.cases),
    Path(snakemake.output.summary),
)
