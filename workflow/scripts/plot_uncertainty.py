"""Snakemake adapter: per-case uncertainty scores against mean foreground Dice, with Spearman's rho."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.report import write_uncertainty_plot

run_step(
    snakemake.log[0],
    write_uncertainty_plot,
    Path(snakemake.input.cases),
    [Path(p) for p in snakemake.input.scores],
    Path(snakemake.output.plot),
    Path(snakemake.output.correlations),
)
