"""Snakemake adapter: the preview PNG of one case (slices with outlines, and its meshes)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.preview import write_preview

run_step(
    snakemake.log[0],
    write_preview,
    snakemake.wildcards.case,
    snakemake.params.set,
    Path(snakemake.input.image),
    Path(snakemake.input.label[0]) if snakemake.input.label else None,  # no reference for unlabelled cases
    Path(snakemake.input.prediction),
    Path(snakemake.input.meshes),
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    Path(snakemake.output.preview),
)
