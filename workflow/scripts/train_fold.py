"""Snakemake adapter: train one fold."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.training.fold import train_one_fold

run_step(
    snakemake.log[0],
    train_one_fold,
    fold=int(snakemake.wildcards.fold),
    plans_path=Path(snakemake.input.plans),
    splits_path=Path(snakemake.input.splits),
    case_paths=[Path(p) for p in snakemake.input.cases],
    train_options=dict(snakemake.params.train),
    seed=int(snakemake.params.seed),
    out_dir=Path(snakemake.output.model).parent,
    device=snakemake.params.device,
    threads=snakemake.threads,
    case_datasets=snakemake.params.case_datasets,
    unlabelled_paths=[Path(p) for p in snakemake.input.unlabelled],
    semi_supervised=dict(snakemake.params.semi_supervised),
    pseudo_label_dirs=[Path(p) for p in snakemake.input.pseudo_labels],
)
