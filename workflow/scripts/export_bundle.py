"""Snakemake adapter: copy the run's plans, fold models and its decisions into an inference bundle."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.prediction.bundle import write_bundle

run_step(
    snakemake.log[0],
    write_bundle,
    Path(snakemake.output.bundle),
    Path(snakemake.input.plans),
    [Path(p) for p in snakemake.input.models],
    Path(snakemake.input.postprocessing),
    dict(snakemake.params.predict),
    Path(snakemake.input.members),
    Path(snakemake.input.precision),
)
