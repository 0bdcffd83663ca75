"""Snakemake adapter: convert one case's image (DICOM folder or image file) to NIfTI."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.workflow import run_step
from carve.convert import DicomOptions, convert_image

run_step(
    snakemake.log[0],
    convert_image,
    snakemake.wildcards.case,
    Path(snakemake.input.image),
    Path(snakemake.output.image),
    DicomOptions(**snakemake.params.dicom),
)
