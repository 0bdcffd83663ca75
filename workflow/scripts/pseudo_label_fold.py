"""Snakemake adapter: one teacher fold pseudo-labels the unlabelled images (self-training)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.prediction.pseudo_labels import pseudo_label_images

run_step(
    snakemake.log[0],
    pseudo_label_images,
    model_path=Path(snakemake.input.model),
    plans_path=Path(snakemake.input.plans),
    image_paths=[Path(p) for p in snakemake.input.unlabelled],
    out_dir=Path(snakemake.output.pseudo_labels),
    semi_supervised=dict(snakemake.params.semi_supervised),
    fold=int(snakemake.wildcards.fold),
    round_index=int(snakemake.wildcards.round),
    device=snakemake.params.device,
    threads=snakemake.threads,
)
