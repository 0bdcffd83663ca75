"""Snakemake adapter: cross-validation of one dataset's individual models (predict and score its cases)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.compare import evaluate_individual_models

run_step(
    snakemake.log[0],
    evaluate_individual_models,
    dataset=snakemake.wildcards.dataset,
    cases=list(snakemake.params.cases),
    images=[Path(p) for p in snakemake.input.images],
    references=[Path(p) for p in snakemake.input.labels],
    plans_path=Path(snakemake.input.plans),
    splits_path=Path(snakemake.input.splits),
    model_paths=[Path(p) for p in snakemake.input.models],
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
