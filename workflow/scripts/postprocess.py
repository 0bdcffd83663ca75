"""Snakemake adapter: apply postprocessing.json to a test case's raw prediction."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.prediction.postprocess import postprocess_file

run_step(
    snakemake.log[0],
    postprocess_file,
    Path(snakemake.input.prediction),
    Path(snakemake.input.decision),
    Path(snakemake.output.labels),
)
