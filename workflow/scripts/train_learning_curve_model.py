"""Snakemake adapter: train the learning curve's model of one size and draw."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.learning_curve import train_subset_model

run_step(
    snakemake.log[0],
    train_subset_model,
    n=int(snakemake.wildcards.n),
    draw=int(snakemake.wildcards.draw),
    plans_path=Path(snakemake.input.plans),
    subsets_path=Path(snakemake.input.subsets),
    case_paths=[Path(p) for p in snakemake.input.cases],
    train_options=dict(snakemake.params.train),
    seed=int(snakemake.params.seed),
    out_dir=Path(snakemake.output.model).parent,
    device=snakemake.params.device,
    threads=snakemake.threads,
)
