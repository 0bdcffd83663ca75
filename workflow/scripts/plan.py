"""Snakemake adapter: fingerprint the training cases and write plans.json, with the training budget as iterations."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.planning.plan import PlanOptions
from carve.training.budget import plan_training_run

options = PlanOptions(
    modality=snakemake.params.modality,
    channels=tuple((str(n), m) for n, m in snakemake.params.channels),
    seed=int(snakemake.params.seed),
    device=snakemake.params.device,
    **snakemake.params.plan,
)
run_step(
    snakemake.log[0],
    plan_training_run,
    [Path(p) for p in snakemake.input.images],
    [Path(p) for p in snakemake.input.labels],
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    options,
    Path(snakemake.output.plans),
    snakemake.params.datasets,
    dict(snakemake.params.train),
    int(snakemake.params.seed),
    snakemake.threads,
    dict(snakemake.params.semi_supervised),
)
