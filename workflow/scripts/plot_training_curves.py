"""Snakemake adapter: the training curves of every fold in one figure."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.report import write_training_curves

run_step(
    snakemake.log[0],
    write_training_curves,
    {int(fold): Path(p) for fold, p in zip(snakemake.params.folds, snakemake.input.curves, strict=True)},
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    Path(snakemake.output.plot),
)
