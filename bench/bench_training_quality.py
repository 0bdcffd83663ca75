"""Benchmark: carve and nnU-Net v2 trained on the same hippocampus folds with the same budget; held-out Dice.

    CARVE_SHARED_DATA=/work/shared/data python bench/bench_training_quality.py [--budget-min 5] [--folds 5] \\
        [--work /tmp/carve-bench-nnunet] [--out bench/results/training_quality.md] [--skip-nnunet]

Runs with the main venv's python; the nnU-Net side runs in bench/.venv-nnunet (bench/requirements-nnunet.txt),
as subprocesses. carve first, then nnU-Net fold by fold:

* carve as a user runs it (bench/pipeline_run.py): a cases sheet of hippocampus10 (all 10 cases role train) and a
  config with only ``cases``, ``results``, ``labels``, ``modality`` and the keys this benchmark sets
  (``train.time_budget_min`` = ``--budget-min``; ``folds``, ``seed``, ``threads`` when given), then the Snakefile's
  default target (``snakemake --cores``) in ``--work``/carve. Its folds are the seeded split it writes to
  results/splits.json. Each fold is scored on its held-out cases from the written files: ``cv/{case}.nii.gz``
  (postprocessed, what ships; the pipeline's test-time mirroring and sliding window) and ``cv_raw/`` (before
  postprocessing); training seconds are snakemake's benchmark of the train_fold job, inference seconds those of
  the predict_cv jobs of the fold's held-out cases (uncertainty maps included);
* nnU-Net: carve's splits.json becomes nnU-Net's splits_final.json, so nnU-Net's fold k trains and holds out the
  same cases as carve's fold k; ``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainer_carveBudget -device
  cpu`` with the same budget and as many threads as one carve training job gets (bench/nnunet/
  nnUNetTrainer_carveBudget.py: nnU-Net's own plan, augmentation, batch and deep supervision; its poly decay over
  wall-clock time), then nnU-Net's predictor (sliding window, Gaussian weighting) on the held-out cases, without
  and with test-time mirroring (8 passes: the original and its flips along every combination of the 3 axes).

Both sides' segmentations are scored on the original grid with the same function (``pipeline_run.dice_per_label``,
carve.evaluation.metrics) against hippocampus10's labels. nnU-Net's wall and CPU seconds (process plus children,
``resource.getrusage``) cover its whole ``nnUNetv2_train`` process (start-up and data-loader workers included).
Planning and preprocessing run once (``nnUNetv2_plan_and_preprocess``) and are reused from ``--work`` by later runs.
``--skip-nnunet`` runs the carve side alone (then ``--iterations`` may replace the time budget). The markdown goes
to ``--out`` and to stdout, the raw numbers (JSON) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pipeline_run as pr
from pipeline_run import run_logged

from carve.imaging.io import read_image

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "training_quality.md"
WORK = Path("/tmp/carve-bench-nnunet")  # nnU-Net's folders; carve's run in carve/ below it
TRAINER_FILE = BENCH / "nnunet" / "nnUNetTrainer_carveBudget.py"
TRAINER = TRAINER_FILE.stem
DATASET_ID = 994
DATASET = f"Dataset{DATASET_ID}_Hippocampus10"
CONFIGURATION = "3d_fullres"
LABELS = tuple(pr.LABELS.values())
CARVE_INFERENCE = ("pipeline: cv/ (postprocessed)", "pipeline: cv_raw/ (before postprocessing)")


# ---- nnU-Net side --------------------------------------------------------------------------------------------
class NnUNet:
    """The nnU-Net venv, its work folders and the environment of its commands."""

    def __init__(self, venv: Path, work: Path, budget_min: float, threads: int):
        self.venv, self.work = venv, work
        self.raw = work / "nnUNet_raw" / DATASET
        self.preprocessed = work / "nnUNet_preprocessed" / DATASET
        self.model = work / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
        n = str(threads)
        self.env = {
            **os.environ,
            "nnUNet_raw": str(work / "nnUNet_raw"),
            "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"),
            "nnUNet_def_n_proc": n,  # planning, preprocessing and export workers
            "nnUNet_n_proc_DA": n,  # data-augmentation workers (nnU-Net's default is 12)
            "nnUNet_compile": "false",
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "CARVE_BENCH_THREADS": n,
            "CARVE_BENCH_BUDGET_MIN": repr(budget_min),
            "MPLBACKEND": "Agg",
        }

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def versions(self) -> dict[str, str]:
        code = "from importlib.metadata import version as v; print(v('nnunetv2'), v('torch'))"
        out = subprocess.run([self.bin("python"), "-c", code], capture_output=True, text=True, check=True)
        nnunet, torch_version = out.stdout.split()
        return {"nnunetv2": nnunet, "torch": torch_version}

    def install_trainer(self) -> Path:
        """Copy the budget trainer to the top of nnU-Net's trainer folder (searched before the sub-packages whose
        imports need torchvision)."""
        folders = list(self.venv.glob("lib/python*/site-packages/nnunetv2/training/nnUNetTrainer"))
        if len(folders) != 1:
            raise SystemExit(f"{self.venv}: no nnunetv2 installed (see bench/requirements-nnunet.txt)")
        target = folders[0] / TRAINER_FILE.name
        shutil.copyfile(TRAINER_FILE, target)
        return target

    def build_raw(self, data: Path) -> list[str]:
        """nnUNet_raw dataset of symbolic links to hippocampus10 (MSD Task04 layout); the case names, sorted."""
        images = sorted((data / "imagesTr").glob("*.nii.gz"))
        names = [p.name.removesuffix(".nii.gz") for p in images]
        for sub in ("imagesTr", "labelsTr"):
            shutil.rmtree(self.raw / sub, ignore_errors=True)
            (self.raw / sub).mkdir(parents=True)
        for name in names:
            (self.raw / "imagesTr" / f"{name}_0000.nii.gz").symlink_to((data / "imagesTr" / f"{name}.nii.gz").resolve())
            (self.raw / "labelsTr" / f"{name}.nii.gz").symlink_to((data / "labelsTr" / f"{name}.nii.gz").resolve())
        dataset = {
            "channel_names": {"0": "MRI"},  # as nnU-Net's own conversion of MSD Task04: z-score per image
            "labels": {"background": 0, **{label: i + 1 for i, label in enumerate(LABELS)}},
            "numTraining": len(names),
            "file_ending": ".nii.gz",
        }
        (self.raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
        return names

    def plan_and_preprocess(self, names: list[str]) -> tuple[float, float] | None:
        """nnU-Net's fingerprint, plan and 3d_fullres preprocessing, unless ``--work`` holds them for these cases."""
        marker = self.preprocessed / "carve_bench_cases.json"
        if marker.exists() and json.loads(marker.read_text()) == names:
            return None
        shutil.rmtree(self.preprocessed, ignore_errors=True)
        cmd = [self.bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", CONFIGURATION]
        cmd += ["-np", self.env["nnUNet_def_n_proc"], "-npfp", self.env["nnUNet_def_n_proc"]]
        seconds = run_logged(cmd + ["--verify_dataset_integrity"], self.work / "logs" / "plan.log", self.env)
        marker.write_text(json.dumps(names))
        return seconds

    def write_splits(self, splits: list[dict[str, list[str]]]) -> None:
        """carve's folds (its results/splits.json) as nnU-Net's splits_final.json: fold k is the same fold."""
        folds = [{"train": list(f["train"]), "val": list(f["val"])} for f in splits]
        (self.preprocessed / "splits_final.json").write_text(json.dumps(folds, indent=1))

    def plan(self) -> dict:
        plans = json.loads((self.preprocessed / "nnUNetPlans.json").read_text())["configurations"][CONFIGURATION]
        return {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"]}

    def train(self, fold: int) -> dict:
        shutil.rmtree(self.model / f"fold_{fold}", ignore_errors=True)
        cmd = [self.bin("nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, str(fold), "-tr", TRAINER, "-device", "cpu"]
        wall, cpu = run_logged(cmd, self.work / "logs" / f"nnunet_train_fold{fold}.log", self.env)
        summary = json.loads((self.model / f"fold_{fold}" / "carve_budget.json").read_text())
        return {**summary, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}

    def predict(self, fold: int, names: list[str]) -> tuple[Path, dict[str, float]]:
        """Segmentations of ``names`` by the fold's model, in <folder>/no_mirroring and <folder>/mirroring."""
        folder = self.work / "predictions" / f"fold{fold}"
        shutil.rmtree(folder, ignore_errors=True)
        images = [str(self.raw / "imagesTr" / f"{name}_0000.nii.gz") for name in names]
        cmd = [self.bin("python"), str(TRAINER_FILE), "predict", "--model", str(self.model), "--fold", str(fold)]
        log = self.work / "logs" / f"nnunet_predict_fold{fold}.log"
        run_logged([*cmd, "--out", str(folder), *images], log, self.env)
        seconds = json.loads(log.read_text().strip().splitlines()[-1])
        return folder, seconds


# ---- one fold per tool ---------------------------------------------------------------------------------------
def as_row(dice: dict[str, float]) -> dict:
    """Per-label Dice (name -> value) as the table's ``dice`` list and ``mean_dice``."""
    values = [dice[name] for name in LABELS]
    return {"dice": [round(float(d), 4) for d in values], "mean_dice": round(float(np.mean(values)), 4)}


def carve_fold(fold: dict) -> dict:
    """A fold of the scored pipeline run (pipeline_run.score_run) in the table's form."""
    seconds = fold["predict_seconds"]
    return {
        "tool": "carve",
        "iterations": fold["iterations"],
        "seconds": fold["seconds"],
        "cpu_seconds": fold["cpu_seconds"],
        "inference": {
            CARVE_INFERENCE[0]: {"seconds": seconds, **as_row(fold["dice"])},
            CARVE_INFERENCE[1]: {"seconds": seconds, **as_row(fold["dice_raw"])},
        },
    }


def nnunet_fold(nnunet: NnUNet, data: Path, fold: int, held_out: list[str]) -> dict:
    result = {"tool": "nnU-Net", **nnunet.train(fold), "inference": {}}
    folder, seconds = nnunet.predict(fold, held_out)
    for mode, label in (("no_mirroring", "sliding window"), ("mirroring", "sliding window, mirrored x8")):
        per_case = []
        for name in held_out:
            prediction, _ = read_image(folder / mode / f"{name}.nii.gz")
            reference, _ = read_image(pr.reference_label(data, name))
            if prediction.shape != reference.shape:
                raise SystemExit(f"{name}: nnU-Net's prediction is {prediction.shape}, the reference {reference.shape}")
            per_case.append(pr.dice_per_label(prediction, reference))
        dice = {n: float(np.mean([c[n] for c in per_case])) for n in LABELS}
        result["inference"][label] = {"seconds": seconds[mode], **as_row(dice)}
    return result


# ---- report --------------------------------------------------------------------------------------------------
def iterations_cell(r: dict) -> str:
    if r["tool"] == "carve":
        return str(r["iterations"])
    full, rest = divmod(r["iterations"], r["iterations_per_epoch"])
    return f"{r['iterations']} ({full} x {r['iterations_per_epoch']}" + (f" + {rest})" if rest else ")")


def row(fold, r: dict, inference: str) -> str:
    s = r["inference"][inference]
    d = s["dice"]
    return (
        f"| {fold} | {r['tool']} | {iterations_cell(r) if fold != 'mean' else r['iterations']} | {r['seconds']:.0f} "
        f"| {r['cpu_seconds']:.0f} | {inference} | {s['seconds']:.1f} | {d[0]:.3f} | {d[1]:.3f} "
        f"| {s['mean_dice']:.3f} |"
    )


def mean_result(results: list[dict]) -> dict:
    first = results[0]
    out = {"tool": first["tool"], "inference": {}}
    for key in ("iterations", "seconds", "cpu_seconds"):
        out[key] = round(float(np.mean([r[key] for r in results])))
    for inference in first["inference"]:
        s = [r["inference"][inference] for r in results]
        out["inference"][inference] = {
            "seconds": float(np.mean([x["seconds"] for x in s])),
            "dice": np.mean([x["dice"] for x in s], axis=0).tolist(),
            "mean_dice": float(np.mean([x["mean_dice"] for x in s])),
        }
    return out


def render(run: dict) -> str:
    folds = run["folds"]
    tools = ["carve"] + ([] if run["skip_nnunet"] else ["nnunet"])
    budget = run["budget"]
    pipeline = run["carve"]["run"]
    header = (
        "| fold | tool | iterations | training wall s | training CPU s | inference | inference s (held-out cases) "
        f"| Dice {LABELS[0]} | Dice {LABELS[1]} | mean Dice |"
    )
    rule = "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"
    held = "; ".join(f"fold {f['fold']}: {', '.join(f['val'])}" for f in folds)
    lines = [
        "# Quality at equal budget: carve (as a user runs it) and nnU-Net v2 on hippocampus folds"
        if not run["skip_nnunet"]
        else "# Quality of carve as a user runs it on hippocampus folds (nnU-Net skipped)",
        "",
        f"Machine: {run['machine']}.",
        "",
        f"`{run['command']}`; {budget} per fold"
        + ("" if run["skip_nnunet"] else f" and tool, {run['threads']} threads per training job")
        + f"; carve's whole pipeline run {pipeline['wall_s'] / 60:.1f} min (`snakemake --cores {pipeline['cores']}`), "
        f"whole benchmark {run['total_s'] / 60:.0f} min.",
        "",
        f"Method: the {len(run['carve']['scores']['splits'])} folds of the 10 MSD hippocampus cases are carve's seeded "
        f"split (its results/splits.json; held out: {held}). carve ran as a user runs it: the Snakefile's default "
        "target with a config that sets only what a user must and the keys listed below (bench/pipeline_run.py); "
        "each fold's Dice is that of the written cross-validation predictions of its held-out cases (cv/: "
        "postprocessed, what ships; cv_raw/: before postprocessing)."
        + (
            ""
            if run["skip_nnunet"]
            else " nnU-Net v2 then trained each fold on the same cases (carve's splits as its splits_final.json) with "
            f"its own {CONFIGURATION} plan, augmentation, batch and deep supervision, its poly learning-rate decay "
            "run over wall-clock time (bench/nnunet/nnUNetTrainer_carveBudget.py), to the same budget, and "
            "segmented the held-out cases. Both are scored with the same Dice function (carve.evaluation.metrics) "
            "against the labels on the original grid."
        ),
        "",
        header,
        rule,
    ]
    for f in folds:
        for tool in tools:
            r = f[tool]
            lines += [row(f["fold"], r, inference) for inference in r["inference"]]
    fold_list = " ".join(str(f["fold"]) for f in folds)
    lines += ["", f"Means over folds {fold_list}:", "", header, rule]
    for tool in tools:
        m = mean_result([f[tool] for f in folds])
        lines += [row("mean", m, inference) for inference in m["inference"]]
    scores = run["carve"]["scores"]
    lines += ["", f"carve: {pr.network_line(scores)}; inference as the pipeline predicts (its defaults)."]
    if not run["skip_nnunet"]:
        plan = run["nnunet_plan"]
        overhead = np.mean([f["nnunet"]["seconds"] - f["nnunet"]["train_seconds"] for f in folds])
        lines[-1] += (
            f" nnU-Net: plan patch {'x'.join(map(str, plan['patch_size']))}, batch {plan['batch_size']}; iterations "
            "as epochs x iterations per epoch (+ the last, partial epoch); its training wall time includes on "
            f"average {overhead:.0f} s outside the budgeted loop (process start, data loaders, checkpoints), its CPU "
            "seconds its data-augmentation workers; inference seconds include loading the model (in the pass "
            "without mirroring). nnU-Net's training is not seeded: one run per fold."
        )
    lines += ["", "## carve's pipeline run", "", *pr.config_section(pipeline), *pr.score_sections(scores)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_run_arguments(parser, 5.0, WORK, OUT, "carve's budget in training iterations (only with --skip-nnunet)")
    parser.add_argument("--skip-nnunet", action="store_true", help="run and report the carve side only")
    parser.add_argument("--nnunet-venv", type=Path, default=BENCH / ".venv-nnunet")
    args = parser.parse_args(argv)
    if args.iterations is not None:
        if not args.skip_nnunet:
            raise SystemExit(
                "--iterations: nnU-Net's side trains to a time budget; give --budget-min, or --skip-nnunet"
            )
        args.budget_min = None
    command = pr.command_line("bench_training_quality.py", argv)
    data = pr.shared_data()
    start = time.monotonic()
    work = args.work.resolve()
    # as many threads as snakemake gives one carve training job: the config's (or the schema's) capped by --cores
    threads = min(args.threads or pr.defaults()["threads"], args.cores)
    nnunet = None
    if not args.skip_nnunet:
        nnunet = NnUNet(args.nnunet_venv.resolve(), work, args.budget_min, threads)
        nnunet_versions = nnunet.versions()
        nnunet.install_trainer()
        if nnunet.build_raw(data) != pr.case_names(data):
            raise SystemExit("carve's and nnU-Net's cases differ")
    pipeline, scores = pr.run_and_score(args, work / "carve", data)
    machine = pipeline["machine"]
    carve_budget = pipeline["config"].get("train", {})
    if nnunet is not None and (carve_budget.get("epochs") or carve_budget.get("time_budget_min") != args.budget_min):
        raise SystemExit(f"carve's run in {work / 'carve'} trained to {pr.budget_text(pipeline)}, not --budget-min")
    run = {
        "command": command,
        "machine": machine,
        "budget": pr.budget_text(pipeline),
        "budget_min": args.budget_min,
        "threads": threads,
        "skip_nnunet": args.skip_nnunet,
        "carve": {"run": pipeline, "scores": scores},
        "folds": [{"fold": f["fold"], "val": f["val"], "carve": carve_fold(f)} for f in scores["folds"]],
    }
    if nnunet is not None:
        run["machine"] = (
            f"{machine}; nnunetv2 {nnunet_versions['nnunetv2']} with torch {nnunet_versions['torch']} (its own venv)"
        )
        prep = nnunet.plan_and_preprocess(pr.case_names(data))
        if prep:
            print(f"nnU-Net plan and preprocessing: {prep[0]:.0f} s ({prep[1]:.0f} CPU-s)", file=sys.stderr, flush=True)
        nnunet.write_splits(scores["splits"])
        run["nnunet_plan"] = nnunet.plan()
        for f in run["folds"]:
            f["nnunet"] = nnunet_fold(nnunet, data, f["fold"], f["val"])
            for r in (f["carve"], f["nnunet"]):
                dice = ", ".join(f"{k} {v['mean_dice']:.3f}" for k, v in r["inference"].items())
                print(
                    f"fold {f['fold']} {r['tool']}: {r['iterations']} iterations, {r['seconds']:.0f} s "
                    f"({r['cpu_seconds']:.0f} CPU-s); mean Dice {dice}",
                    file=sys.stderr,
                    flush=True,
                )
    run["total_s"] = time.monotonic() - start
    pr.write_outputs(render(run), run, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
