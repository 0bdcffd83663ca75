"""Snakemake adapter: fingerprint the training cases and write plans.json."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.planning.plan import PlanOptions, plan_dataset

options = PlanOptions(
    modality=snakemake.params.modality,
    channels=tuple((str(n), m) for n, m in snakemake.params.channels),
    seed=int(snakemake.params.seed),
    device=snakemake.params.device,
    **snakemake.params.plan,
)
run_step(
    snakemake.log[0],
    plan_dataset,
    [Path(p) for p in snakemake.input.images],
    [Path(p) for p in snakemake.input.labels],
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    options,
    Path(snakemake.output.plans),
    snakemake.params.datasets,
)
