"""Snakemake adapter: convert one case's label onto its converted image's grid."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.imaging.convert import DicomOptions, LabelOptions, convert_label

run_step(
    snakemake.log[0],
    convert_label,
    snakemake.wildcards.case,
    Path(snakemake.input.label),
    Path(snakemake.input.image),
    Path(snakemake.output.label),
    {int(k): str(v) for k, v in snakemake.params.labels.items()},
    LabelOptions(),
    DicomOptions(**snakemake.params.dicom),
    to_values=None
    if snakemake.params.to_values is None
    else {int(k): int(v) for k, v in snakemake.params.to_values.items()},
)
