"""Snakemake adapter: the run's prediction precision, timed on its first trained model (fp32 or bf16)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.prediction.inference_precision import choose_inference_precision

run_step(
    snakemake.log[0],
    choose_inference_precision,
    plans_path=Path(snakemake.input.plans),
    model_paths=[Path(p) for p in snakemake.input.models],
    out=Path(snakemake.output.decision),
    predict_options=snakemake.params.predict,
    device=snakemake.params.device,
    threads=snakemake.threads,
)
