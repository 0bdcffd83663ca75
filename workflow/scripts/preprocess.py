"""Snakemake adapter: normalise and resample one training case to the plan's spacing."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.planning.plan import load_plans, plans_for_dataset
from carve.planning.preprocess import preprocess_case

run_step(
    snakemake.log[0],
    lambda: preprocess_case(
        Path(snakemake.input.image),
        Path(snakemake.input.label),
        plans_for_dataset(load_plans(Path(snakemake.input.plans)), snakemake.params.dataset),
        Path(snakemake.output.case),
    ),
)
