"""Benchmark: semi-supervised training on the synthetic demo, each method against supervised, through the Snakefile.

    python bench/semi_supervised_demo.py [--unlabelled 20] [--iterations 300] [--semi-iterations 150] [--folds 3]
        [--methods supervised mean_teacher copy_paste self_training]

The demo (config/config.yaml: 9 training cases, 2 test cases, anisotropic oblique MR-like DICOM) gains
``demo.n_unlabelled`` generated images of role unlabelled; each method then runs the Snakefile's default target in
a work folder of its own (one after the other, never side by side), with only these keys changed from
config/config.yaml: ``results``, ``demo.n_unlabelled``, ``folds``, ``train.iterations`` and the method's
``semi_supervised`` block:

* ``supervised``: none (the unlabelled rows are not read), ``--iterations``;
* ``mean_teacher``: ``method: mean_teacher``, ``--semi-iterations``;
* ``copy_paste``: ``method: mean_teacher, copy_paste: true``, ``--semi-iterations``;
* ``self_training``: ``method: self_training, student_init: teacher``, ``--semi-iterations`` for the teacher and
  as many for the student.

``--semi-iterations`` defaults to half of ``--iterations``: a mean-teacher step (twice the batch and the teacher's
pass) costs about two supervised steps, and self-training trains twice, so the methods get about the compute of
supervised training, as in the hippocampus runs (bench/train_hippocampus.py).

Each run's written cross-validation predictions (``cv/{case}.nii.gz``, postprocessed: what ships) are scored here
against the demo's labels (the sheet the run generated) with carve.evaluation.metrics; the run's wall minutes are
the whole run's. A mean-teacher iteration costs more than a supervised one (its larger batch and the teacher's
pass): the table gives the seconds of the training jobs (Snakemake's benchmarks; each takes all the run's cores)
and of pseudo-labelling, so that compute is compared, not iterations alone. ``--score-only`` scores the runs
already in ``--work`` again. Markdown to ``--out`` and stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "src"))

import pipeline_run as pr  # noqa: E402

METHODS = {
    "supervised": {"method": "none"},
    "mean_teacher": {"method": "mean_teacher"},
    "copy_paste": {"method": "mean_teacher", "copy_paste": True},
    "self_training": {"method": "self_training", "student_init": "teacher"},
}
WORK = Path("/tmp/carve-bench-semi-demo")
OUT = BENCH / "results" / "semi_supervised_demo.md"


def demo_config(results: Path, n_unlabelled: int, folds: int, iterations: int, semi: dict) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["results"] = str(results)
    config["cases"] = str(results / "data" / "cases.tsv")
    config["demo"] = {**config["demo"], "n_unlabelled": n_unlabelled}
    config["folds"] = folds
    config["train"] = {**config["train"], "iterations": iterations}
    config["semi_supervised"] = semi
    return config


def score(results: Path, labels: dict[int, str]) -> list[dict]:
    """Dice of each training case's written cv/ prediction against its label (the sheet the run generated), by
    bench/pipeline_run.py's scoring (a prediction on another grid than its label's is refused)."""
    sheet = results / "data" / "cases.tsv"
    with open(sheet, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["role"] == "train"]
    scored = []
    for row in rows:
        prediction, reference = pr.read_on_grid(results / "cv" / f"{row['case']}.nii.gz", sheet.parent / row["label"])
        dice = pr.dice_per_label(prediction, reference, labels)
        scored.append({"case": row["case"], **dice, "mean": float(np.mean(list(dice.values())))})
    return scored


def job_seconds(results: Path, rules: set[str]) -> float:
    """Wall seconds of the jobs of ``rules``, summed from Snakemake's benchmarks (a training job takes every core
    the run has, so its jobs ran one after the other: wall seconds are its compute; Snakemake's ``cpu_time``
    is sampled every 30 s or so and misses much of a job of a minute)."""
    total = 0.0
    for path in (results / "benchmarks").rglob("*.tsv"):
        if rules & set(path.relative_to(results / "benchmarks").parts):
            with open(path, newline="") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    total += float(row["s"])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unlabelled", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=300, help="supervised iterations per fold")
    parser.add_argument(
        "--semi-iterations", type=int, default=None, help="per job of a method (default: half of --iterations)"
    )
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--cores", type=int, default=pr.usable_cores())
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--score-only", action="store_true", help="score the runs already in --work (their run.json) again"
    )
    args = parser.parse_args()
    semi_iterations = args.semi_iterations or max(1, args.iterations // 2)
    machine = pr.machine_line()
    records = {}
    for name in args.methods:
        work = args.work / name
        if args.score_only:
            run = pr.earlier_run(work)
            config = yaml.safe_load((work / "config.yaml").read_text())
        else:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            iterations = args.iterations if name == "supervised" else semi_iterations
            config = demo_config(work / "results", args.unlabelled, args.folds, iterations, METHODS[name])
            (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            cmd = [*pr.snakemake_command(), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work)]
            cmd += ["--configfile", str(work / "config.yaml"), "--cores", str(args.cores)]
            print(" ".join(cmd), file=sys.stderr, flush=True)
            wall, cpu = pr.run_logged(cmd, work / "snakemake.log", cwd=work)
            run = {"machine": machine, "wall_s": wall, "cpu_s": cpu}
            (work / "run.json").write_text(json.dumps(run) + "\n")
        machine = run["machine"]
        iterations = config["train"]["iterations"]
        wall, cpu = run["wall_s"], run["cpu_s"]
        labels = {int(k): v for k, v in config["labels"].items()}
        records[name] = {
            "semi_supervised": METHODS[name],
            "iterations": iterations,
            "cases": score(work / "results", labels),
            "wall_min": wall / 60,
            "cpu_min": cpu / 60,
            "training_s": job_seconds(work / "results", {"train_fold", "train_round_fold"}),
            "pseudo_label_s": job_seconds(work / "results", {"pseudo_label_fold"}),
        }
        print(name, json.dumps({k: v for k, v in records[name].items() if k != "cases"}), file=sys.stderr)
    base = records.get("supervised")
    names = list(labels.values())
    lines = [
        "# Semi-supervised training on the synthetic demo, through the Snakefile",
        "",
        f"Machine: {machine}.",
        "",
        f"`python bench/semi_supervised_demo.py --unlabelled {args.unlabelled} --iterations {args.iterations} "
        f"--semi-iterations {semi_iterations} --folds {args.folds}`: config/config.yaml's demo with "
        f"{args.unlabelled} generated unlabelled images; keys changed from it: `results`, "
        f"`demo.n_unlabelled: {args.unlabelled}`, `folds: {args.folds}`, `train.iterations` (the table's column; "
        "self-training: per teacher and per student job) and the method's `semi_supervised` block. Dice from the "
        "written cv/ predictions (postprocessed) against the demo's labels, mean over the training cases; paired: the "
        "difference to supervised, case by case (t: mean / standard error).",
        "",
        f"| method | semi_supervised | iterations | {' | '.join(f'Dice {n}' for n in names)} | mean | "
        "paired vs supervised | training jobs s (+ pseudo-labelling) | run wall min |",
        "|---|---|---:|" + "---:|" * (len(names) + 4),
    ]
    for name, rec in records.items():
        means = {n: np.mean([c[n] for c in rec["cases"]]) for n in [*names, "mean"]}
        paired = ""
        if base is not None and name != "supervised":
            diff = np.array([c["mean"] for c in rec["cases"]]) - np.array([c["mean"] for c in base["cases"]])
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            paired = f"{diff.mean():+.3f} (t {diff.mean() / se:.2f})" if se > 0 else f"{diff.mean():+.3f}"
        pseudo = f" (+ {rec['pseudo_label_s']:.0f})" if rec["pseudo_label_s"] else ""
        block = ", ".join(f"{k}: {v}" for k, v in rec["semi_supervised"].items())
        lines.append(
            f"| {name} | {block} | {rec['iterations']} | {' | '.join(f'{means[n]:.3f}' for n in names)} | "
            f"**{means['mean']:.3f}** | {paired} | {rec['training_s']:.0f}{pseudo} | {rec['wall_min']:.1f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
