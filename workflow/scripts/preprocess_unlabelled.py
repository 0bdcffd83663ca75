"""Snakemake adapter: normalise and resample one unlabelled image (semi-supervised training) to the plan's spacing."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.planning.plan import load_plans
from carve.planning.preprocess import preprocess_case

run_step(
    snakemake.log[0],
    lambda: preprocess_case(
        Path(snakemake.input.image), None, load_plans(Path(snakemake.input.plans)), Path(snakemake.output.case)
    ),
)
