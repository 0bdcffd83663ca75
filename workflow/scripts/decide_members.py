"""Snakemake adapter: keep the mirrorings and projections as members only where cross-validation shows they pay."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.prediction.members import decide_members_files

run_step(
    snakemake.log[0],
    decide_members_files,
    [Path(p) for p in snakemake.input.comparisons],
    dict(snakemake.params.extra),
    Path(snakemake.output.decision),
)
