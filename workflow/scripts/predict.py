"""Snakemake adapter: fold-ensemble prediction of one test case (raw labels and uncertainty maps)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.training.fold import predict_with_models

out = snakemake.output
run_step(
    snakemake.log[0],
    predict_with_models,
    case=snakemake.wildcards.test_case,
    image_path=Path(snakemake.input.image),
    plans_path=Path(snakemake.input.plans),
    model_paths=[Path(p) for p in snakemake.input.models],
    outputs=(Path(out.labels), Path(out.uncertainty), Path(out.scores), Path(out.maps[0]).parent),
    predict_options=dict(snakemake.params.predict),
    members_path=Path(snakemake.input.members),
    precision_path=Path(snakemake.input.precision),
    device=snakemake.params.device,
    threads=snakemake.threads,
    dataset=snakemake.params.dataset,
)
