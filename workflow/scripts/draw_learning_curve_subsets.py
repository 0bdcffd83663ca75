"""Snakemake adapter: one draw of the learning curve's training subsets and evaluation cases."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.learning_curve import write_subsets

run_step(
    snakemake.log[0],
    write_subsets,
    Path(snakemake.output.subsets),
    list(snakemake.params.train),
    list(snakemake.params.test),
    [int(n) for n in snakemake.params.sizes],
    int(snakemake.wildcards.draw),
    int(snakemake.params.seed),
)
