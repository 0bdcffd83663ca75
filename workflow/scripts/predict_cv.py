"""Snakemake adapter: cross-validation prediction of one training case by the fold that held it out."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.workflow import run_step
from carve.fold import predict_held_out

run_step(
    snakemake.log[0],
    predict_held_out,
    case=snakemake.wildcards.train_case,
    image_path=Path(snakemake.input.image),
    plans_path=Path(snakemake.input.plans),
    splits_path=Path(snakemake.input.splits),
    model_paths=[Path(p) for p in snakemake.input.models],
    outputs=(Path(snakemake.output.labels), Path(snakemake.output.uncertainty), Path(snakemake.output.scores)),
    predict_options=dict(snakemake.params.predict),
    device=snakemake.params.device,
    threads=snakemake.threads,
)
