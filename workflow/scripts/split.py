"""Snakemake adapter: seeded k-fold split of the training cases."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.planning.split import write_splits

run_step(
    snakemake.log[0],
    write_splits,
    Path(snakemake.output.splits),
    list(snakemake.params.cases),
    int(snakemake.params.folds),
    int(snakemake.params.seed),
    snakemake.params.groups,
)
