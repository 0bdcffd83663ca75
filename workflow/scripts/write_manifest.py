"""Snakemake adapter: write the run's manifest.json (sha256 of inputs and outputs, config, versions)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.pipeline.provenance import write_manifest

code_root = Path(snakemake.scriptdir).resolve().parents[1]
run_step(
    snakemake.log[0],
    write_manifest,
    Path(snakemake.output.manifest).parent,  # the results folder
    dict(snakemake.params.config),
    [snakemake.input.sheet, *snakemake.input.sources],
    Path(snakemake.output.manifest),
    code_root=code_root,
    lock_file=code_root / "requirements.lock",
)
