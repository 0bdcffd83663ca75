"""carve run as a user runs it, and scored from what it wrote: shared by bench/train_hippocampus.py and
bench/bench_training_quality.py.

One run: a cases sheet for hippocampus10 (all 10 cases role ``train``) and a config that sets what a user must set
(``cases``, ``results``, ``labels``, ``modality``) plus the keys the benchmark changes, listed, with everything
else left to the schema's defaults (workflow/schemas/config.schema.yaml); then

    snakemake --snakefile Snakefile --directory WORK --configfile WORK/config.yaml --cores N

with the default target (everything a user gets). The scores are computed here, from the written files: Dice per
case and label of ``cv/{case}.nii.gz`` (the held-out fold's prediction after postprocessing: what ships) and of
``cv_raw/{case}.nii.gz`` (before postprocessing) against the case's reference label in hippocampus10, with
``carve.evaluation.metrics``; the pipeline's own ``metrics/cases.tsv`` must agree with the first. Iterations per
fold come
from ``models/fold_k/curves.tsv``, seconds per fold from snakemake's ``benchmarks/train_fold/fold_k.tsv``.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from machine import cpu_model

from carve.evaluation.metrics import overlap_metrics
from carve.imaging.io import read_image
from carve.training.train import TrainConfig

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SNAKEFILE = REPO / "Snakefile"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DATASET = "hippocampus10"
LABELS = {1: "anterior", 2: "posterior"}
MODALITY = "MR"
RESULTS = "results"  # the config's `results`, relative to the work folder
AGREEMENT = 1e-5  # most difference allowed between this script's Dice and the pipeline's metrics/cases.tsv


# ---- data and config -----------------------------------------------------------------------------------------
def shared_data() -> Path:
    """hippocampus10 in the shared data folder (``CARVE_SHARED_DATA``)."""
    data = os.environ.get("CARVE_SHARED_DATA")
    if not data:
        raise SystemExit(f"set CARVE_SHARED_DATA to the shared data folder (it holds {DATASET}/)")
    folder = Path(data).resolve() / DATASET
    if not (folder / "imagesTr").is_dir():
        raise SystemExit(f"{folder}: no imagesTr/ (MSD layout expected)")
    return folder


def case_names(data: Path) -> list[str]:
    return sorted(p.name.removesuffix(".nii.gz") for p in (data / "imagesTr").glob("*.nii.gz"))


def reference_label(data: Path, case: str) -> Path:
    return data / "labelsTr" / f"{case}.nii.gz"


UNLABELLED = "hippocampus-unlabelled"  # beside hippocampus10: images of the same task without labels


def unlabelled_images(data: Path, n: int) -> list[Path]:
    """The first ``n`` images (sorted by name) of hippocampus-unlabelled, beside ``data`` (hippocampus10)."""
    images = sorted((data.parent / UNLABELLED / "imagesTr").glob("*.nii.gz"))
    if n > len(images):
        raise SystemExit(f"{data.parent / UNLABELLED}: {len(images)} images, {n} asked for")
    return images[:n]


def write_sheet(data: Path, work: Path, n_unlabelled: int = 0) -> Path:
    """The cases sheet of hippocampus10: every case with its label, role train (absolute paths); with
    ``n_unlabelled`` the first images of hippocampus-unlabelled too, role unlabelled, no label."""
    rows = ["case\timage\tlabel\trole"]
    for case in case_names(data):
        rows.append(f"{case}\t{data / 'imagesTr' / f'{case}.nii.gz'}\t{reference_label(data, case)}\ttrain")
    for image in unlabelled_images(data, n_unlabelled):
        rows.append(f"u_{image.name.removesuffix('.nii.gz')}\t{image}\t\tunlabelled")
    sheet = work / "cases.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def budget_keys(budget_min: float | None, iterations: int | None) -> dict[str, Any]:
    """The ``train`` keys of a budget: minutes (turned into iterations when the run is planned, by timing the
    training step on this machine), or a number of iterations (the same count on any machine: contention-proof);
    none: the user's default."""
    if budget_min is not None and iterations is not None:
        raise SystemExit("give --budget-min or --iterations, not both")
    if iterations is not None:
        if iterations < 1:
            raise SystemExit(f"--iterations must be positive, got {iterations}")
        return {"train.iterations": iterations}
    if budget_min is not None:
        return {"train.time_budget_min": budget_min}
    return {}


def defaults() -> dict[str, Any]:
    """Dotted key -> the default a user gets: the schema's defaults, and for ``train`` keys (the schema gives none)
    carve.training.train.TrainConfig's."""
    schema = yaml.safe_load(SCHEMA.read_text())
    out: dict[str, Any] = {}

    def walk(properties: dict, prefix: str) -> None:
        for key, spec in properties.items():
            if "default" in spec:
                out[prefix + key] = spec["default"]
            if isinstance(spec.get("properties"), dict):
                walk(spec["properties"], f"{prefix}{key}.")

    walk(schema["properties"], "")
    for f in fields(TrainConfig):
        if f.name not in ("augment", "network") and f"train.{f.name}" not in out:
            value = getattr(TrainConfig, f.name, None)
            out[f"train.{f.name}"] = list(value) if isinstance(value, tuple) else value
    return out


def user_config(work: Path, sheet: Path, changes: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Write ``work``/config.yaml: what a user must set, plus ``changes`` (dotted key -> value), nothing else.
    Returns its path and the changes as rows (key, value, default)."""
    config: dict[str, Any] = {
        "cases": str(sheet),
        "results": RESULTS,
        "labels": dict(LABELS),
        "modality": MODALITY,
    }
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = work / "config.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    known = defaults()
    rows = [{"key": k, "value": v, "default": known.get(k, "(none)")} for k, v in changes.items()]
    return path, {"config": config, "config_yaml": text, "changes": rows}


def budget_text(run: dict[str, Any]) -> str:
    """A run's training budget per fold, in words, from its config (the user's default when it sets none)."""
    train = run["config"].get("train", {})
    if train.get("iterations"):
        return f"{train['iterations']} iterations"
    if train.get("epochs"):
        per_epoch = train.get("iterations_per_epoch", TrainConfig.iterations_per_epoch)
        epochs = f"{train['epochs']} epoch" + ("s" if train["epochs"] != 1 else "")
        text = f"{train['epochs'] * per_epoch} iterations ({epochs} x {per_epoch})"
        return text
    minutes = train.get("time_budget_min", TrainConfig.time_budget_min)
    text = f"{minutes:g} minutes, turned into iterations when the run is planned (plans.json: training)"
    return text + ("" if "time_budget_min" in train else " (the user's default)")


# ---- running ------------------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User plus system CPU seconds of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple:
    """Run ``cmd`` with its output into ``log``; (wall seconds, CPU seconds of it and its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.monotonic(), cpu_seconds()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
    if rc:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); end of {log}:\n{tail}")
    return wall, cpu


def snakemake_command() -> list[str]:
    """The venv's snakemake (beside this python), else ``python -m snakemake``."""
    exe = Path(sys.executable).parent / "snakemake"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "snakemake"]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_pipeline(
    work: Path, changes: dict[str, Any], cores: int, data: Path, fresh: bool = True, n_unlabelled: int = 0
) -> dict[str, Any]:
    """Write the sheet and config into ``work`` and run the Snakefile's default target there; with ``fresh`` the
    results folder of an earlier run is removed first (else snakemake reruns only what changed);
    ``n_unlabelled``: images of hippocampus-unlabelled added to the sheet (role unlabelled)."""
    machine = machine_line()  # before the run: its load average is what else was running
    work.mkdir(parents=True, exist_ok=True)
    sheet = write_sheet(data, work, n_unlabelled)
    config_path, config = user_config(work, sheet, changes)
    if fresh:
        shutil.rmtree(work / RESULTS, ignore_errors=True)
    cmd = [*snakemake_command(), "--snakefile", str(SNAKEFILE), "--directory", str(work)]
    cmd += ["--configfile", str(config_path), "--cores", str(cores)]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    wall, cpu = run_logged(cmd, work / "snakemake.log", cwd=work)
    run = {
        "machine": machine,
        "command": cmd,
        "cores": cores,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "unlabelled": n_unlabelled,
        **config,
    }
    (work / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    return run


def earlier_run(work: Path) -> dict[str, Any]:
    """The record of the run already in ``work`` (``--score-only``)."""
    path = work / "run.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no finished run to score in {work}")
    return json.loads(path.read_text())


# ---- scoring ------------------------------------------------------------------------------------------------
def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels=LABELS) -> dict[str, float]:
    """Dice of each label (name -> value) by carve.evaluation.metrics; both empty counts 1.0 (carve's convention)."""
    return {name: overlap_metrics(reference == value, prediction == value)["dice"] for value, name in labels.items()}


def read_on_grid(path: Path, reference_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A written segmentation and the reference label; refuses a prediction on another grid than the label's."""
    prediction, g_pred = read_image(path)
    reference, g_ref = read_image(reference_path)
    if prediction.shape != reference.shape or not g_pred.is_close(g_ref, 1e-3, reference.shape):
        raise SystemExit(
            f"{path} is not on the grid of {reference_path} ({prediction.shape} vs {reference.shape}): the user "
            "would get a segmentation that does not overlay their scan"
        )
    return prediction, reference


def fold_seconds(results: Path, fold: int) -> dict[str, float]:
    """Wall and CPU seconds of the fold's train_fold job (snakemake's benchmark file)."""
    table = pd.read_csv(results / "benchmarks" / "train_fold" / f"fold_{fold}.tsv", sep="\t")
    return {"seconds": round(float(table["s"].iloc[-1]), 1), "cpu_seconds": round(float(table["cpu_time"].iloc[-1]), 1)}


def fold_iterations(results: Path, fold: int) -> dict[str, Any]:
    """Iterations and epochs trained (curves.tsv's last row) and the fold's resolved budget (config.json)."""
    curves = pd.read_csv(results / "models" / f"fold_{fold}" / "curves.tsv", sep="\t")
    train = json.loads((results / "models" / f"fold_{fold}" / "config.json").read_text())["train"]
    return {
        "iterations": int(curves["iterations"].iloc[-1]),
        "epochs": int(curves["epoch"].iloc[-1]),
        "budget": {k: train[k] for k in ("iterations", "epochs", "iterations_per_epoch", "time_budget_min")},
        "seed": train["seed"],
    }


def predict_seconds(results: Path, cases: list[str]) -> float:
    """Wall seconds of the predict_cv jobs of ``cases`` (snakemake's benchmark files)."""
    files = [results / "benchmarks" / "predict_cv" / f"{case}.tsv" for case in cases]
    return round(sum(float(pd.read_csv(f, sep="\t")["s"].iloc[-1]) for f in files), 2)


def tsv_records(path: Path) -> list[dict[str, Any]]:
    return json.loads(pd.read_csv(path, sep="\t").to_json(orient="records"))


def score_run(results: Path, data: Path) -> dict[str, Any]:
    """Every figure of a finished run, from its files (module docstring)."""
    splits = json.loads((results / "splits.json").read_text())["folds"]
    pipeline = pd.read_csv(results / "metrics" / "cases.tsv", sep="\t")
    cases, folds, worst_gap = [], [], 0.0
    for k, split in enumerate(splits):
        for case in split["val"]:
            reference_path = reference_label(data, case)
            row: dict[str, Any] = {"case": case, "fold": k}
            for kind, folder in (("dice", "cv"), ("dice_raw", "cv_raw")):
                prediction, reference = read_on_grid(results / folder / f"{case}.nii.gz", reference_path)
                row[kind] = dice_per_label(prediction, reference)
            for name, value in row["dice"].items():
                theirs = pipeline.loc[(pipeline["case"] == case) & (pipeline["label"] == name), "dice"]
                if len(theirs) != 1:
                    raise SystemExit(f"{results}/metrics/cases.tsv: {len(theirs)} rows for case {case}, label {name}")
                gap = abs(float(theirs.iloc[0]) - value)
                worst_gap = max(worst_gap, gap)
                if not gap <= AGREEMENT:
                    raise SystemExit(
                        f"case {case}, label {name}: Dice {value:.6f} from cv/{case}.nii.gz against {reference_path}, "
                        f"but {float(theirs.iloc[0]):.6f} in the pipeline's metrics/cases.tsv"
                    )
            row["mean_dice"] = float(np.mean(list(row["dice"].values())))
            row["mean_dice_raw"] = float(np.mean(list(row["dice_raw"].values())))
            cases.append(row)
        held = [c for c in cases if c["fold"] == k]
        folds.append(
            {
                "fold": k,
                "val": list(split["val"]),
                **fold_iterations(results, k),
                **fold_seconds(results, k),
                "predict_seconds": predict_seconds(results, list(split["val"])),
                **summary(held),
            }
        )
    assessment = results / "assessment"
    return {
        "splits": splits,
        "folds": folds,
        "cases": cases,
        "mean": summary(cases),
        "worst_case": min(cases, key=lambda c: c["mean_dice"]),
        "metrics_tsv_max_difference": worst_gap,
        "plans": json.loads((results / "plans.json").read_text()),
        "postprocessing": json.loads((results / "postprocessing.json").read_text()),
        "score_correlation": tsv_records(assessment / "score_correlation.tsv"),
        "calibration": tsv_records(assessment / "calibration.tsv"),
    }


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over ``cases`` per label and of the per-case means, after and before postprocessing."""
    out: dict[str, Any] = {}
    for kind in ("dice", "dice_raw"):
        out[kind] = {name: float(np.mean([c[kind][name] for c in cases])) for name in LABELS.values()}
        out[f"mean_{kind}"] = float(np.mean([c[f"mean_{kind}"] for c in cases]))
    return out


def fold_of(splits: list[dict[str, list[str]]], case: str) -> int:
    return next(k for k, s in enumerate(splits) if case in s["val"])


# ---- report -------------------------------------------------------------------------------------------------
def machine_line(extra: str = "") -> str:
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({usable_cores()} usable{load}), Python {platform.python_version()}; "
        f"carve {version('carve')} with torch {version('torch')}, snakemake {version('snakemake')}{extra}"
    )


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def table(records: list[dict[str, Any]]) -> list[str]:
    """A markdown table of ``records`` (one row each, the first record's keys as columns)."""
    if not records:
        return ["(empty)"]
    columns = list(records[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in records]
    return lines


def config_section(run: dict[str, Any]) -> list[str]:
    changes = [
        {"key": r["key"], "value": json.dumps(r["value"]), "default": json.dumps(r["default"])} for r in run["changes"]
    ]
    lines = [
        "The config the benchmark wrote (`cases`, `results`, `labels`, `modality`: what a user must set; everything "
        "not in it is the schema's default):",
        "",
        "```yaml",
        run["config_yaml"].strip(),
        "```",
        "",
    ]
    if run.get("unlabelled"):
        lines += [
            f"The sheet adds the first {run['unlabelled']} images of hippocampus-unlabelled (sorted by name) with role "
            "unlabelled and no label.",
            "",
        ]
    if changes:
        lines += ["Keys the benchmark sets, with the default a user gets otherwise:", "", *table(changes), ""]
    else:
        lines += ["The benchmark changes no key: this is what a user gets.", ""]
    return lines


def score_sections(scores: dict[str, Any]) -> list[str]:
    """Per-fold, per-case, postprocessing and uncertainty-assessment sections of one scored run."""
    names = list(LABELS.values())
    head = (
        "| fold | held-out cases | iterations | training s | training CPU s | "
        + " | ".join(f"Dice {n}" for n in names)
        + " | mean Dice | "
        + " | ".join(f"raw {n}" for n in names)
        + " | raw mean |"
    )
    rule = "|---|---|---:|---:|---:|" + "---:|" * (2 * len(names) + 2)

    def cells(s: dict[str, Any]) -> str:
        post = " | ".join(f"{s['dice'][n]:.3f}" for n in names)
        raw = " | ".join(f"{s['dice_raw'][n]:.3f}" for n in names)
        return f"{post} | **{s['mean_dice']:.3f}** | {raw} | {s['mean_dice_raw']:.3f}"

    lines = [head, rule]
    for f in scores["folds"]:
        lines.append(
            f"| {f['fold']} | {', '.join(f['val'])} | {f['iterations']} | {f['seconds']:.0f} | {f['cpu_seconds']:.0f} "
            f"| {cells(f)} |"
        )
    folds = scores["folds"]
    lines.append(
        f"| mean over cases | {len(scores['cases'])} | {np.mean([f['iterations'] for f in folds]):.0f} "
        f"| {np.mean([f['seconds'] for f in folds]):.0f} | {np.mean([f['cpu_seconds'] for f in folds]):.0f} "
        f"| {cells(scores['mean'])} |"
    )
    worst = scores["worst_case"]
    lines += [
        "",
        f"Worst case: {worst['case']} (fold {worst['fold']}): "
        + ", ".join(f"{n} {worst['dice'][n]:.3f}" for n in names)
        + f", mean {worst['mean_dice']:.3f} (raw {worst['mean_dice_raw']:.3f}). The pipeline's metrics/cases.tsv "
        f"agrees with this script's Dice from the cv/ files to {scores['metrics_tsv_max_difference']:.1g}.",
        "",
        "Per case:",
        "",
        "| case | fold | "
        + " | ".join(f"Dice {n}" for n in names)
        + " | mean | "
        + " | ".join(f"raw {n}" for n in names)
        + " | raw mean |",
        "|---|---:|" + "---:|" * (2 * len(names) + 2),
    ]
    for c in sorted(scores["cases"], key=lambda c: c["case"]):
        lines.append(f"| {c['case']} | {c['fold']} | {cells(c)} |")
    post = scores["postprocessing"]
    lines += ["", "Postprocessing decided by the pipeline (postprocessing.json, from the raw cross-validation):", ""]
    steps = [
        {"label": d["name"], **s, "applied": ", ".join(d["apply"]) or "none"}
        for d in post["labels"].values()
        for s in d["steps"]
    ]
    lines += table(steps) if steps else [f"no operation tried ({post.get('operations_tried')})"]
    lines += [
        "",
        "Uncertainty scores against mean foreground Dice over the cross-validation cases "
        "(assessment/score_correlation.tsv; a useful score falls as Dice rises: negative rho):",
        "",
        *table(scores["score_correlation"]),
        "",
        "Calibration of the cross-validation predictions (assessment/calibration.tsv):",
        "",
        *table(scores["calibration"]),
        "",
    ]
    return lines


def network_line(scores: dict[str, Any]) -> str:
    """carve's plan of the run: network, patch, batch, GFLOP per training iteration."""
    from carve.training.fold import train_config_from
    from carve.training.network import forward_flops

    plans = scores["plans"]
    config = train_config_from(plans, {}, 0, iterations=1)
    gflop = 3 * config.batch_size * forward_flops(config.network, config.patch_size) / 1e9
    return (
        f"network {'-'.join(map(str, config.network.channels))}, patch {'x'.join(map(str, config.patch_size))}, "
        f"batch {config.batch_size}, {gflop:.0f} GFLOP per training iteration (the run's plans.json)"
    )


def write_outputs(markdown: str, record: dict[str, Any], out: Path, json_out: Path | None) -> Path:
    """The markdown to ``out`` and to stdout, the record (JSON) to ``json_out`` (default: ``out`` as .json)."""
    json_out = json_out or out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    json_out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown)
    print(f"wrote {out} and {json_out}", file=sys.stderr)
    return json_out


def command_line(script: str, argv: list[str] | None) -> str:
    """How the benchmark was called, for the report (the data folder elided)."""
    return f"CARVE_SHARED_DATA=... python bench/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)


def add_run_arguments(parser, budget_default: float | None, work: Path, out: Path, iterations_help: str) -> None:
    """The options of a pipeline run that both benchmarks take (``work``, ``out``: their default folders)."""
    parser.add_argument("--folds", type=int, default=None, help="config `folds` (default: the schema's, 5)")
    parser.add_argument("--seed", type=int, default=None, help="config `seed` (default: the schema's, 0)")
    parser.add_argument("--threads", type=int, default=None, help="config `threads` (default: the schema's)")
    parser.add_argument(
        "--budget-min",
        type=float,
        default=budget_default,
        help="train.time_budget_min per fold"
        + (f" (default {budget_default:g})" if budget_default else " (default: the user's)"),
    )
    parser.add_argument("--iterations", type=int, default=None, help=iterations_help)
    parser.add_argument(
        "--cores", type=int, default=usable_cores(), help="snakemake --cores (default: the usable cores, as `all`)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any further config key (dotted, e.g. train.learning_rate=0.003; YAML value), written and listed",
    )
    parser.add_argument(
        "--unlabelled",
        type=int,
        default=0,
        help="images of hippocampus-unlabelled added to the sheet with role unlabelled (default 0); they are read "
        "only where semi_supervised.method is set",
    )
    parser.add_argument("--work", type=Path, default=work, help=f"work folder (default {work})")
    parser.add_argument(
        "--score-only", action="store_true", help="score carve's run already in the work folder, without running it"
    )
    parser.add_argument("--out", type=Path, default=out, help="markdown file to write")
    parser.add_argument("--json", type=Path, default=None, help="JSON file to write (default: --out as .json)")


def run_changes(args) -> dict[str, Any]:
    """The config keys a benchmark run changes, in order: folds, seed, threads, budget, then --set."""
    changes: dict[str, Any] = {}
    for key in ("folds", "seed", "threads"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    changes.update(budget_keys(args.budget_min, args.iterations))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item}: expected KEY=VALUE")
        changes[key.strip()] = parse_value(value)
    return copy.deepcopy(changes)


def run_and_score(args, work: Path, data: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline run in ``work`` (or, with ``--score-only``, the one already there) and its scores."""
    if args.score_only:
        run = earlier_run(work)
    else:
        run = run_pipeline(work, run_changes(args), args.cores, data, n_unlabelled=args.unlabelled)
    return run, score_run(work / RESULTS, data)
