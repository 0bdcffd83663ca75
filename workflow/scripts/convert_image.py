"""Snakemake adapter: convert one case's image (DICOM folder or image file; one or several channels) to NIfTI."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.imaging.convert import ChannelSpec, DicomOptions, convert_image

run_step(
    snakemake.log[0],
    convert_image,
    snakemake.wildcards.case,
    [Path(p) for p in snakemake.params.sources],
    Path(snakemake.output.image),
    DicomOptions(**snakemake.params.dicom),
    [ChannelSpec(**c) for c in snakemake.params.channels],
    list(snakemake.params.series),
)
