"""Snakemake adapter: box plots of every metric per label and set."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.report import write_metrics_boxplots

run_step(snakemake.log[0], write_metrics_boxplots, Path(snakemake.input.cases), Path(snakemake.output.plot))
