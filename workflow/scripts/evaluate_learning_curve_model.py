"""Snakemake adapter: predict and score the evaluation cases of one learning-curve model."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.learning_curve import evaluate_subset_model

cases = list(snakemake.params.cases)
run_step(
    snakemake.log[0],
    evaluate_subset_model,
    n=int(snakemake.wildcards.n),
    draw=int(snakemake.wildcards.draw),
    subsets_path=Path(snakemake.input.subsets),
    plans_path=Path(snakemake.input.plans),
    model_path=Path(snakemake.input.model),
    images={c: Path(p) for c, p in zip(cases, snakemake.input.images, strict=True)},
    references={c: Path(p) for c, p in zip(cases, snakemake.input.labels, strict=True)},
    label_names={int(k): str(v) for k, v in snakemake.params.labels.items()},
    tolerance_mm=float(snakemake.params.tolerance_mm),
    predict_options=dict(snakemake.params.predict),
    members_path=Path(snakemake.input.members),
    precision_path=Path(snakemake.input.precision),
    out_table=Path(snakemake.output.table),
    predictions_dir=Path(snakemake.output.predictions),
    device=snakemake.params.device,
    threads=snakemake.threads,
)
