"""Benchmark: carve and nnU-Net v2 trained on the same hippocampus folds with the same budget; held-out Dice.

    CARVE_SHARED_DATA=/work/shared/data python bench/bench_training_quality.py [--budget-min 5] \\
        [--folds 0 1 2 3 4] [--work /tmp/carve-bench-nnunet] [--out bench/results/training_quality.md]

Runs with the main venv's python; the nnU-Net side runs in bench/.venv-nnunet (bench/requirements-nnunet.txt),
as subprocesses. Folds are bench/train_hippocampus.py's: the 10 cases of hippocampus10 sorted by name, fold f
holds out cases 2f and 2f+1 and trains on the other 8; nnU-Net gets them as its splits_final.json. Per fold, one
after the other (carve first):

* carve: bench/train_hippocampus.py's recipe (its ``load_cases`` and ``build_config`` with no overrides, seed 0),
  ``train_fold`` with ``--budget-min`` minutes and ``--threads`` threads, then ``predict_volume`` (one pass, no
  mirroring) on the 2 held-out cases;
* nnU-Net: ``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainer_carveBudget -device cpu`` with the same
  budget and threads (bench/nnunet/nnUNetTrainer_carveBudget.py: nnU-Net's own plan, augmentation, batch and
  deep supervision; its poly decay over wall-clock time), then nnU-Net's predictor (sliding window, Gaussian
  weighting) on the 2 held-out cases, without and with test-time mirroring (8 passes: the original and its flips
  along every combination of the 3 axes).

Both sides' segmentations are scored on the original grid with the same function (``carve.train.dice_per_label``)
against the reference labels. Wall and CPU seconds (process plus children, ``resource.getrusage``) cover the
training call: carve's ``train_fold`` in this process, nnU-Net's whole ``nnUNetv2_train`` process (start-up and
data-loader workers included). Planning and preprocessing run once (``nnUNetv2_plan_and_preprocess``) and are
reused from ``--work`` by later runs. The markdown table goes to ``--out`` and to stdout, the raw numbers (JSON)
to ``--work``/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model
from train_hippocampus import build_config, load_cases

from carve.io import read_image
from carve.network import forward_flops, load_model
from carve.train import TrainConfig, dice_per_label, predict_volume, train_fold

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "training_quality.md"
TRAINER_FILE = BENCH / "nnunet" / "nnUNetTrainer_carveBudget.py"
TRAINER = TRAINER_FILE.stem
DATASET_ID = 994
DATASET = f"Dataset{DATASET_ID}_Hippocampus10"
CONFIGURATION = "3d_fullres"
LABELS = ("anterior", "posterior")
N_CLASSES = 1 + len(LABELS)


# ---- folds and measurement -----------------------------------------------------------------------------------
def fold_indices(fold: int, n: int) -> list[int]:
    """Held-out case indices of ``fold``: as bench/train_hippocampus.py."""
    return sorted({2 * fold % n, (2 * fold + 1) % n})


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` with its output into ``log``; (wall seconds, CPU seconds of it and its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.monotonic(), cpu_seconds()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
    if rc:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); end of {log}:\n{tail}")
    return wall, cpu


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
        seconds = run_logged(cmd + ["--verify_dataset_integrity"], self.env, self.work / "logs" / "plan.log")
        marker.write_text(json.dumps(names))
        return seconds

    def write_splits(self, names: list[str]) -> None:
        n, folds = len(names), []
        for fold in range(n // 2):
            held_out = fold_indices(fold, n)
            folds.append(
                {"train": [c for i, c in enumerate(names) if i not in held_out], "val": [names[i] for i in held_out]}
            )
        (self.preprocessed / "splits_final.json").write_text(json.dumps(folds, indent=1))

    def plan(self) -> dict:
        plans = json.loads((self.preprocessed / "nnUNetPlans.json").read_text())["configurations"][CONFIGURATION]
        return {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"]}

    def train(self, fold: int) -> dict:
        shutil.rmtree(self.model / f"fold_{fold}", ignore_errors=True)
        cmd = [self.bin("nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, str(fold), "-tr", TRAINER, "-device", "cpu"]
        wall, cpu = run_logged(cmd, self.env, self.work / "logs" / f"nnunet_train_fold{fold}.log")
        summary = json.loads((self.model / f"fold_{fold}" / "carve_budget.json").read_text())
        return {**summary, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}

    def predict(self, fold: int, names: list[str]) -> tuple[Path, dict[str, float]]:
        """Segmentations of ``names`` by the fold's model, in <folder>/no_mirroring and <folder>/mirroring."""
        folder = self.work / "predictions" / f"fold{fold}"
        shutil.rmtree(folder, ignore_errors=True)
        images = [str(self.raw / "imagesTr" / f"{name}_0000.nii.gz") for name in names]
        cmd = [self.bin("python"), str(TRAINER_FILE), "predict", "--model", str(self.model), "--fold", str(fold)]
        log = self.work / "logs" / f"nnunet_predict_fold{fold}.log"
        run_logged([*cmd, "--out", str(folder), *images], self.env, log)
        seconds = json.loads(log.read_text().strip().splitlines()[-1])
        return folder, seconds


# ---- one fold per tool ---------------------------------------------------------------------------------------
def scores(predictions: list[np.ndarray], references: list[np.ndarray]) -> dict:
    per_case = [dice_per_label(p, r, N_CLASSES) for p, r in zip(predictions, references, strict=True)]
    dice = np.mean(per_case, axis=0)
    return {"dice": [round(float(d), 4) for d in dice], "mean_dice": round(float(dice.mean()), 4)}


def carve_fold(cases, config: TrainConfig, fold: int, out_dir: Path, threads: int) -> dict:
    held_out = fold_indices(fold, len(cases))
    train = [(img, lab) for i, (_, img, lab) in enumerate(cases) if i not in held_out]
    val = [cases[i] for i in held_out]
    for name in ("checkpoint.pt", "model.pt"):
        (out_dir / name).unlink(missing_ok=True)
    wall, cpu = time.monotonic(), cpu_seconds()
    model_path = train_fold(train, [(img, lab) for _, img, lab in val], config, out_dir, threads=threads)
    wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
    start = time.monotonic()
    model, extra = load_model(model_path)
    predictions = [predict_volume(model, img, config.patch_size).argmax(0) for _, img, _ in val]
    inference_s = time.monotonic() - start
    return {
        "tool": "carve",
        "iterations": extra["iterations"],
        "seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "inference": {
            "one pass": {"seconds": round(inference_s, 2), **scores(predictions, [lab for _, _, lab in val])}
        },
    }


def nnunet_fold(nnunet: NnUNet, cases, fold: int) -> dict:
    held_out = [cases[i] for i in fold_indices(fold, len(cases))]
    result = {"tool": "nnU-Net", **nnunet.train(fold), "inference": {}}
    folder, seconds = nnunet.predict(fold, [name for name, _, _ in held_out])
    for mode, label in (("no_mirroring", "sliding window"), ("mirroring", "sliding window, mirrored x8")):
        predictions = []
        for name, _, reference in held_out:
            prediction, _ = read_image(folder / mode / f"{name}.nii.gz")
            if prediction.shape != reference.shape:
                raise SystemExit(f"{name}: nnU-Net's prediction is {prediction.shape}, the reference {reference.shape}")
            predictions.append(prediction)
        references = [lab for _, _, lab in held_out]
        result["inference"][label] = {"seconds": seconds[mode], **scores(predictions, references)}
    return result


# ---- report --------------------------------------------------------------------------------------------------
def machine_line(nnunet_versions: dict[str, str]) -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({usable} usable{load}), Python {platform.python_version()}; "
        f"carve {version('carve')} with torch {torch.__version__}; nnunetv2 {nnunet_versions['nnunetv2']} "
        f"with torch {nnunet_versions['torch']} (its own venv)"
    )


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
    carve = [f["carve"] for f in folds]
    nnunet = [f["nnunet"] for f in folds]
    budget = run["budget_min"]
    plan = run["nnunet_plan"]
    fold_list = " ".join(str(f["fold"]) for f in folds)
    overhead = np.mean([r["seconds"] - r["train_seconds"] for r in nnunet])
    header = (
        "| fold | tool | iterations | training wall s | training CPU s | inference | inference s (2 cases) "
        "| Dice anterior | Dice posterior | mean Dice |"
    )
    rule = "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"
    lines = [
        "# Quality at equal budget: carve and nnU-Net v2 on hippocampus folds",
        "",
        f"Machine: {run['machine']}.",
        "",
        f"`CARVE_SHARED_DATA=... python bench/bench_training_quality.py --budget-min {budget:g} --folds {fold_list}`;"
        f" {budget:g} minutes of wall clock on {run['threads']} threads per fold and tool; whole run "
        f"{run['total_s'] / 60:.0f} min.",
        "",
        "Method: on each fold of the 10 MSD hippocampus cases (sorted by name; fold f holds out cases 2f and 2f+1 "
        "and trains on the other 8), carve (bench/train_hippocampus.py's recipe) and then nnU-Net v2 (its own "
        f"{CONFIGURATION} plan, augmentation, batch and deep supervision, with its poly learning-rate decay run over "
        "wall-clock time: bench/nnunet/nnUNetTrainer_carveBudget.py) trained to the same budget, and each fold's "
        "model segmented the 2 held-out cases, scored with the same Dice function on the original grid.",
        "",
        header,
        rule,
    ]
    for f in folds:
        for r in (f["carve"], f["nnunet"]):
            lines += [row(f["fold"], r, inference) for inference in r["inference"]]
    lines += ["", f"Means over folds {fold_list}:", "", header, rule]
    for results in (carve, nnunet):
        m = mean_result(results)
        lines += [row("mean", m, inference) for inference in m["inference"]]
    lines += [
        "",
        f"carve: network {run['carve_network']}, patch {'x'.join(map(str, run['carve_patch']))}, batch "
        f"{run['carve_batch']}, {run['carve_gflop']:.0f} GFLOP per iteration; inference one pass over the whole "
        f"volume, no mirroring. nnU-Net: plan patch {'x'.join(map(str, plan['patch_size']))}, batch "
        f"{plan['batch_size']}; iterations as epochs x iterations per epoch (+ the last, partial epoch); its "
        f"training wall time includes on average {overhead:.0f} s outside the budgeted loop (process start, data "
        "loaders, checkpoints), its CPU seconds its data-augmentation workers; inference seconds include loading "
        "the model (in the pass without mirroring). nnU-Net's training is not seeded: one run per fold.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=5.0, help="training budget per fold and tool, minutes")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/carve-bench-nnunet"), help="nnU-Net's folders etc.")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    parser.add_argument("--nnunet-venv", type=Path, default=BENCH / ".venv-nnunet")
    args = parser.parse_args(argv)
    data = os.environ.get("CARVE_SHARED_DATA")
    if not data:
        raise SystemExit("set CARVE_SHARED_DATA to the shared data folder (it holds hippocampus10/)")
    data = Path(data) / "hippocampus10"
    start = time.monotonic()
    work = args.work.resolve()
    nnunet = NnUNet(args.nnunet_venv.resolve(), work, args.budget_min, args.threads)
    nnunet_versions = nnunet.versions()
    machine = machine_line(nnunet_versions)
    nnunet.install_trainer()
    names = nnunet.build_raw(data)
    cases = load_cases(data)
    if [name for name, _, _ in cases] != names:
        raise SystemExit("carve's and nnU-Net's case orders differ")
    if any(not 0 <= f < len(cases) // 2 for f in args.folds):
        raise SystemExit(f"folds are 0..{len(cases) // 2 - 1}")
    prep = nnunet.plan_and_preprocess(names)
    if prep:
        print(f"nnU-Net plan and preprocessing: {prep[0]:.0f} s ({prep[1]:.0f} CPU-s)", file=sys.stderr, flush=True)
    nnunet.write_splits(names)
    config = build_config(argparse.Namespace(set=[], budget_min=args.budget_min, epochs=None, seed=0))
    run = {
        "machine": machine,
        "budget_min": args.budget_min,
        "threads": args.threads,
        "nnunet_plan": nnunet.plan(),
        "carve_network": "-".join(map(str, config.network.channels)),
        "carve_patch": list(config.patch_size),
        "carve_batch": config.batch_size,
        "carve_gflop": 3 * config.batch_size * forward_flops(config.network, config.patch_size) / 1e9,
        "folds": [],
    }
    for fold in args.folds:
        result = {"fold": fold, "carve": carve_fold(cases, config, fold, work / "carve" / f"fold{fold}", args.threads)}
        result["nnunet"] = nnunet_fold(nnunet, cases, fold)
        run["folds"].append(result)
        for r in (result["carve"], result["nnunet"]):
            dice = ", ".join(f"{k} {v['mean_dice']:.3f}" for k, v in r["inference"].items())
            print(
                f"fold {fold} {r['tool']}: {r['iterations']} iterations, {r['seconds']:.0f} s "
                f"({r['cpu_seconds']:.0f} CPU-s); mean Dice {dice}",
                file=sys.stderr,
                flush=True,
            )
    run["total_s"] = time.monotonic() - start
    (work / "results.json").write_text(json.dumps(run, indent=1))
    text = render(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
