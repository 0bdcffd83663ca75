"""Snakemake adapter: a training case predicted by its held-out fold plain and with the extra members, compared."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.training.fold import compare_held_out_members

run_step(
    snakemake.log[0],
    compare_held_out_members,
    case=snakemake.wildcards.train_case,
    image_path=Path(snakemake.input.image),
    label_path=Path(snakemake.input.label),
    plans_path=Path(snakemake.input.plans),
    splits_path=Path(snakemake.input.splits),
    model_paths=[Path(p) for p in snakemake.input.models],
    out=Path(snakemake.output.comparison),
    predict_options=dict(snakemake.params.predict),
    device=snakemake.params.device,
    threads=snakemake.threads,
    dataset=snakemake.params.dataset,
    precision_path=Path(snakemake.input.precision),
)
