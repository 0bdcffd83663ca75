"""Snakemake adapter: per label, keep the postprocessing operations that raise the cross-validation Dice."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.prediction.postprocess import PostprocessOptions, decide_postprocessing

options = dict(snakemake.params.postprocess)
run_step(
    snakemake.log[0],
    decide_postprocessing,
    [Path(p) for p in snakemake.input.predictions],
    [Path(p) for p in snakemake.input.references],
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    PostprocessOptions(tuple(options["operations"]), float(options["min_dice_gain"])),
    Path(snakemake.output.decision),
)
