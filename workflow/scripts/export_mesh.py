"""Snakemake adapter: the meshes of a case's segmentation, with their quality table and uncertainty colours."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.export.mesh import export_segmentation_meshes
from carve.pipeline.workflow import run_step

run_step(
    snakemake.log[0],
    export_segmentation_meshes,
    Path(snakemake.input.labels),
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    Path(snakemake.output.meshes),
    options=dict(snakemake.params.mesh),
    uncertainty_path=Path(snakemake.input.uncertainty),
)
