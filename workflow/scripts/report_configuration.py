"""Snakemake adapter: the resolved configuration (YAML) and a page of it and the plans (HTML)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.report import write_configuration

run_step(
    snakemake.log[0],
    write_configuration,
    dict(snakemake.params.config),
    Path(snakemake.input.plans),
    Path(snakemake.output.yaml),
    Path(snakemake.output.html),
)
