"""Benchmark: carve's cross-validation Dice on hippocampus10 as a user gets it, from the Snakefile's written files.

    CARVE_SHARED_DATA=/work/shared/data python bench/train_hippocampus.py                 # the user's defaults
    CARVE_SHARED_DATA=/work/shared/data python bench/train_hippocampus.py --iterations 600
    CARVE_SHARED_DATA=/work/shared/data python bench/train_hippocampus.py --budget-min 5 --folds 5

Writes a cases sheet of the 10 MSD hippocampus cases (all role train; labels 1 anterior, 2 posterior) and a config
into ``--work`` (outside the repository) that sets only ``cases``, ``results``, ``labels``, ``modality`` and the keys
this run changes (``--folds``, ``--seed``, ``--threads``, the budget, ``--set KEY=VALUE``), runs the Snakefile's
default target there with ``snakemake --cores``, and scores the written cross-validation predictions
(``cv/``: postprocessed, what ships; ``cv_raw/``: before postprocessing) against the labels itself
(bench/pipeline_run.py). The budget: ``--budget-min M`` (``train.time_budget_min``: turned into iterations when the
run is planned, by timing the training step, so the count depends on the machine and on what else runs while it
is timed) or ``--iterations N`` (``train.iterations``: the same count anywhere, the contention-proof one); neither:
the user's default. Markdown to ``--out`` and stdout, the numbers (JSON) beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pipeline_run as pr

OUT = pr.BENCH / "results" / "train_hippocampus.md"
WORK = Path("/tmp/carve-bench-hippocampus")


def render(run: dict, scores: dict, command: str) -> str:
    folds = len(scores["folds"])
    lines = [
        f"# carve on hippocampus10 as a user runs it: {folds}-fold cross-validation through the Snakefile",
        "",
        f"Machine: {run['machine']}.",
        "",
        f"`{command}`; {pr.budget_text(run)} per fold; whole pipeline run (`snakemake --cores {run['cores']}`, "
        f"default target) {run['wall_s'] / 60:.1f} min.",
        "",
        "Method: a cases sheet of the 10 MSD hippocampus cases (all role train) and a config; the Snakefile's default "
        "target, as a user runs it; then this script scores the written cross-validation predictions, each case by "
        "the fold that held it out (results/splits.json, from the config's seed): `cv/{case}.nii.gz` (postprocessed, "
        "what ships; **bold**) and `cv_raw/{case}.nii.gz` (before postprocessing), against the case's label in "
        "hippocampus10, with carve.evaluation.metrics. Iterations from models/fold_k/curves.tsv, training seconds from "
        "snakemake's benchmarks/train_fold/fold_k.tsv (the whole job: loading, training, validation, saving).",
        "",
        *pr.config_section(run),
        f"carve's plan: {pr.network_line(scores)}.",
        "",
        *pr.score_sections(scores),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_run_arguments(parser, None, WORK, OUT, "training iterations per fold (train.iterations; no time budget)")
    args = parser.parse_args(argv)
    command = pr.command_line("train_hippocampus.py", argv)
    run, scores = pr.run_and_score(args, args.work.resolve(), pr.shared_data())
    record = {"command": command, "run": run, "scores": scores}
    pr.write_outputs(render(run, scores, command), record, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
