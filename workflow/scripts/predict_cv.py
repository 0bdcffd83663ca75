"""Snakemake adapter: cross-validation prediction of one training case by the fold that held it out (raw labels)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.training.fold import predict_held_out

out = snakemake.output
run_step(
    snakemake.log[0],
    predict_held_out,
    case=snakemake.wildcards.train_case,
    image_path=Path(snakemake.input.image),
    plans_path=Path(snakemake.input.plans),
    splits_path=Path(snakemake.input.splits),
    model_paths=[Path(p) for p in snakemake.input.models],
    outputs=(Path(out.labels), Path(out.uncertainty), Path(out.scores), Path(out.maps[0]).parent),
    predict_options=dict(snakemake.params.predict),
    members_path=Path(snakemake.input.members),
    precision_path=Path(snakemake.input.precision),
    device=snakemake.params.device,
    threads=snakemake.threads,
    dataset=snakemake.params.dataset,
)
