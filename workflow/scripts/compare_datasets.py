"""Snakemake adapter: the shared model against the individual models, per dataset."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from pathlib import Path

from carve.pipeline.workflow import run_step
from carve.evaluation.compare import compare_datasets

run_step(
    snakemake.log[0],
    compare_datasets,
    shared_cases=Path(snakemake.input.shared),
    individual_tables=[Path(p) for p in snakemake.input.individual],
    case_datasets=dict(snakemake.params.case_datasets),
    out_tsv=Path(snakemake.output.table),
    out_png=Path(snakemake.output.plot),
)
