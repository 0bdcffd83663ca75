"""Snakemake adapter: one mesh per label of a case's segmentation."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.workflow import run_step
from carve.mesh import export_segmentation_meshes

mesh = dict(snakemake.params.mesh)
run_step(
    snakemake.log[0],
    export_segmentation_meshes,
    Path(snakemake.input.labels),
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    Path(snakemake.output.meshes),
    file_format=mesh.get("format", "stl"),
    smoothing_iterations=int(mesh.get("smoothing_iterations", 10)),
)
