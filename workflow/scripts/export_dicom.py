"""Snakemake adapter: write a test case's prediction as DICOM-SEG or RTSTRUCT referencing its source series."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.export.dicom_export import export_prediction

run_step(
    snakemake.log[0],
    export_prediction,
    snakemake.params.kind,
    Path(snakemake.input.labels),
    Path(snakemake.input.source),
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    Path(snakemake.output[0]),
    snakemake.params.dicom,
)
