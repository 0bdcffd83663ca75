"""Snakemake adapter: generate the synthetic demo dataset and its cases sheet."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.pipeline.demo import make_demo

demo = dict(snakemake.params.demo)
run_step(
    snakemake.log[0],
    make_demo,
    Path(snakemake.output.sheet),
    n_train=int(demo.get("n_train", 8)),
    n_test=int(demo.get("n_test", 2)),
    n_unlabelled=int(demo.get("n_unlabelled", 0)),
    seed=int(demo.get("seed", 0)),
    shape=demo.get("shape"),
    spacing_mm=demo.get("spacing_mm"),
    domains=tuple(demo.get("domains") or ()),
)
