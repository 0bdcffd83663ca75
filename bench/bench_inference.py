"""Benchmark: ensemble sliding-window inference, carve against MONAI's sliding_window_inference and nnU-Net v2.

    python bench/bench_inference.py [--repeats 1] [--folds 5] [--synthetic-folds N] [--shape 300 512 512]
                                    [--cases real synthetic] [--threads 2] [--out bench/results/inference.md]

What is compared is the layer below file I/O: a fold ensemble of one network over an image that is already
normalised and in memory, with the same network, weights, patch, overlap and Gaussian weighting on every side,
mirroring off, on the CPU. The network is carve's default CPU network for a 1-channel, 2-class problem: the
plan's defaults (:class:`carve.planning.plan.PlanOptions`: base 16 channels, at most 5 stages) at carve's CPU patch
budget, 48 x 64 x 48 (z, y, x; ``--patch``), its topology from :func:`carve.training.network.plan_topology`. Each
fold is
a seeded random initialisation (``torch.manual_seed(fold)``): weights do not change the timing, and every side
loads the same ones from one file. The sides:

* carve: :func:`carve.prediction.inference.sliding_window_probabilities` with ``batch_windows`` as in
  :class:`carve.prediction.predict.PredictOptions` (2), float32 accumulators, in the precision the pipeline's
  ``predict.precision: auto`` (the default) picks on this machine: decided before the timed call, as rule
  ``choose_inference_precision`` does, by :func:`carve.prediction.inference_precision.decide_inference_precision`
  on the first fold model, the patch and the batch (bf16 where the CPU has native bf16 and it is at least 1.2x
  faster, else fp32). It fuses each window's softmax (Gaussian weighted), averages the members' probabilities and
  also streams the per-voxel std of the labels (as rule predict, not the background's) and the entropy across
  members (work the other sides do not do).
  ``carve-fp32``: the same in fp32 (the reference of the agreement columns). ``carve-nomaps``: the same as carve
  with ``uncertainty=False`` (the mean alone, what the other sides compute). ``carve-fp16`` (opt-in,
  ``--sides``): float32 arithmetic with float16 accumulators.
* MONAI: ``monai.inferers.sliding_window_inference(mode="gaussian", sigma_scale=1/8)``, called once per fold
  model, as a user would, with ``sw_batch_size`` equal to carve's batch and a predictor that returns the
  network's softmax (so that, as in carve, probabilities are fused); the folds' results are averaged.
* nnU-Net: ``nnUNetPredictor(tile_step_size=1 - overlap, use_gaussian=True, use_mirroring=False,
  perform_everything_on_device=False)`` given carve's network and the fold weights through
  ``manual_initialization``; ``predict_logits_from_preprocessed_data`` (its fold ensemble: one window at a time,
  Gaussian-weighted logits accumulated in float16, summed over folds), then its label manager's softmax. It runs
  in nnU-Net's own virtual environment (``bench/.venv-nnunet``), importing carve's network module from ``src``.

Every measured run is a fresh Python process; the sides alternate (carve, MONAI, nnU-Net, carve, ...). In each
process the image (a float32 ``.npy``) and the models are loaded first; then the resident set size is read
(``/proc/self/statm``) and the ensemble call is timed (wall clock). ``peak RSS`` is the whole process's peak
(``ru_maxrss``: interpreter, libraries, image and models included); ``added`` is the peak during the call (the
kernel's high-water mark ``VmHWM``, reset just before it through ``/proc/self/clear_refs``; the process's peak where
that cannot be reset) minus the resident size just before the call, i.e. what the call itself needed. Agreement is
measured after the timing, in the same process, against the first carve run of the case: the largest and the mean
absolute difference of the ensemble's class probabilities, and the fraction of voxels whose argmax differs; the
reference is the case's first ``carve-fp32`` run (the first carve run where that side is not run).

Cases: the TotalSegmentator example CT (122 x 101 x 112 voxels at 3 mm, ``--real-ct``) and a synthetic CT of
``--shape`` (z y x; default 300 512 512, from ``bench_inference_memory.synthetic_ct``), both clipped to
[-200, 400] HU and z-scored with mean 50, std 60. ``--folds`` sets the ensemble size of every case and
``--synthetic-folds`` that of the synthetic case alone (the large volume takes long on a small CPU). The
markdown table goes to ``--out`` (rewritten after every run, marked partial until the last) and to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "results" / "inference.md"
NNUNET_PYTHON = BENCH / ".venv-nnunet" / "bin" / "python"
REAL_CT = Path("/work/shared/data/ct/totalsegmentator_example/example_ct.nii.gz")
SIDES = ("carve-fp32", "carve", "carve-nomaps", "carve-fp16", "MONAI", "nnU-Net")  # the order of the runs
DEFAULT_SIDES = ("carve-fp32", "carve", "carve-nomaps", "MONAI", "nnU-Net")
N_CLASSES = 2
PATCH = (48, 64, 48)  # z, y, x: carve's CPU patch budget (carve.planning.plan.CPU_PATCH_VOXELS)
SIGMA_SCALE = 1.0 / 8.0  # every side's Gaussian: sigma = patch / 8
CT_SCHEME = {"scheme": "ct", "clip": [-200.0, 400.0], "mean": 50.0, "std": 60.0}
SLAB_VOXELS = 1 << 22  # agreement is computed slab by slab along z, so that it adds little memory


# ---- child process: one measured run ---------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (``VmHWM``), so that it measures the call alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _high_water_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _build_models(weights: dict, n_folds: int) -> list:
    from carve.training.network import NetworkConfig, UNet3D

    config = NetworkConfig.from_dict(weights["network"])
    models = []
    for state in weights["state_dicts"][:n_folds]:
        model = UNet3D(config)
        model.load_state_dict(state)
        models.append(model.eval())
    return models


def _prepare_carve(weights: dict, spec: dict, side: str):
    """carve's ensemble call for ``side`` (see the module docstring) and what it ran in."""
    import torch

    from carve.prediction.inference import sliding_window_probabilities

    models = _build_models(weights, spec["folds"])
    half = side == "carve-fp16"
    precision = spec["auto_precision"] if side in ("carve", "carve-nomaps") else "fp32"

    def run(image: np.ndarray) -> np.ndarray:
        result = sliding_window_probabilities(
            models,
            image,
            spec["patch"],
            n_classes=N_CLASSES,
            overlap=spec["overlap"],
            mirror_axes=(),
            batch_windows=spec["batch"],
            device="cpu",
            accumulate_dtype=torch.float16 if half else torch.float32,
            precision=precision,
            half_precision_output=half,
            sigma_scale=SIGMA_SCALE,
            uncertainty=side != "carve-nomaps",
            foreground_std_only=True,  # as rule predict: the background's std is never written
        )
        return result.mean_probabilities

    return run, {}, precision


def _prepare_monai(weights: dict, spec: dict):
    from importlib.metadata import version

    import torch
    from monai.inferers import sliding_window_inference

    models = _build_models(weights, spec["folds"])

    @torch.inference_mode()
    def run(image: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(image)[None]
        total = None
        for model in models:

            def predictor(x: torch.Tensor, model=model) -> torch.Tensor:
                return torch.softmax(model(x), dim=1)

            probabilities = sliding_window_inference(
                inputs,
                spec["patch"],
                spec["batch"],
                predictor,
                overlap=spec["overlap"],
                mode="gaussian",
                sigma_scale=SIGMA_SCALE,
            )
            probabilities = torch.as_tensor(probabilities)
            total = probabilities if total is None else total.add_(probabilities)
        total /= len(models)
        return total[0].numpy()

    return run, {"monai": version("monai")}, "fp32"


def _prepare_nnunet(weights: dict, spec: dict):
    from importlib.metadata import version

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    network = _build_models(weights, 1)[0]
    architecture = {"network_class_name": "carve.training.network.UNet3D", "arch_kwargs": {}, "_kw_requires_import": []}
    configuration = {"patch_size": list(spec["patch"]), "architecture": architecture}
    plans = PlansManager({"configurations": {"3d_fullres": configuration}, "label_manager": "LabelManager"})
    dataset = {"labels": {"background": 0, **{f"class_{k}": k for k in range(1, N_CLASSES)}}}
    predictor = nnUNetPredictor(
        tile_step_size=1.0 - spec["overlap"],
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans,
        plans.get_configuration("3d_fullres"),
        list(weights["state_dicts"][: spec["folds"]]),
        dataset,
        "carve.training.network.UNet3D",
        None,
    )

    def run(image: np.ndarray) -> np.ndarray:
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(image))
        return predictor.label_manager.apply_inference_nonlin(logits).numpy()

    return run, {"nnunetv2": version("nnunetv2")}, "fp32"


def _agreement(probabilities: np.ndarray, reference: np.ndarray) -> dict:
    """Largest and mean |difference| of the class probabilities, fraction of voxels whose argmax differs."""
    step = max(1, SLAB_VOXELS // int(np.prod(reference.shape[2:])))
    largest, total, differ = 0.0, 0.0, 0
    edges = np.concatenate([[0.0], np.logspace(-9, 0, 9 * 20 + 1)])  # 20 bins per decade
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    for z0 in range(0, reference.shape[1], step):
        a = np.asarray(probabilities[:, z0 : z0 + step], dtype=np.float32)
        b = np.asarray(reference[:, z0 : z0 + step], dtype=np.float32)
        difference = np.abs(a - b)
        largest = max(largest, float(difference.max()))
        total += float(difference.sum(dtype=np.float64))
        counts += np.histogram(np.minimum(difference, 1.0), edges)[0]
        differ += int((a.argmax(0) != b.argmax(0)).sum())
    voxels = int(np.prod(reference.shape[1:]))
    p999 = float(edges[1 + int(np.searchsorted(np.cumsum(counts), 0.999 * counts.sum()))])  # the bin's upper edge
    return {
        "max_abs": largest,
        "p999_abs": p999,
        "mean_abs": total / (voxels * reference.shape[0]),
        "argmax_differ": differ / voxels,
    }


def _summary(probabilities: np.ndarray) -> dict:
    """How spread the reference's probabilities are (class 1), so that the differences can be judged."""
    foreground = np.asarray(probabilities[1], dtype=np.float32)
    return {
        "p1_min": float(foreground.min()),
        "p1_max": float(foreground.max()),
        "p1_std": float(foreground.std(dtype=np.float64)),
        "argmax_1": float((np.asarray(probabilities).argmax(0) == 1).mean()),
    }


def child(spec_path: str) -> None:
    """One measured run (see the module docstring); writes its result as JSON to ``spec["result"]``."""
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, str(REPO / "src"))  # nnU-Net's environment imports carve's network from the source tree
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    weights = torch.load(spec["weights"], map_location="cpu", weights_only=True)
    side = spec["side"]
    if side.startswith("carve"):
        run, versions, precision = _prepare_carve(weights, spec, side)
    elif side == "MONAI":
        run, versions, precision = _prepare_monai(weights, spec)
    elif side == "nnU-Net":
        run, versions, precision = _prepare_nnunet(weights, spec)
    else:
        raise ValueError(f"unknown side {side!r}")
    del weights
    image = np.load(spec["image"])
    gc.collect()
    reset = _reset_peak()  # else the call's peak is the process's (ru_maxrss), maybe reached before the call
    before, peak_before = _rss_bytes(), _peak_bytes()
    start = time.perf_counter()
    probabilities = run(image)
    seconds = time.perf_counter() - start
    peak = _peak_bytes()
    result = {
        "seconds": seconds,
        "before": before,
        "peak": peak,
        "call_peak": _high_water_bytes() if reset else peak,
        "peak_before": peak_before,
        "precision": precision,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **versions},
    }
    if tuple(probabilities.shape) != (N_CLASSES, *image.shape[1:]):
        raise ValueError(f"{side} returned shape {probabilities.shape}, expected {(N_CLASSES, *image.shape[1:])}")
    reference = Path(spec["reference"])
    if reference.exists():
        result["agreement"] = _agreement(probabilities, np.load(reference, mmap_mode="r"))
    elif not spec["reference_side"]:  # the reference run before it failed
        result["agreement"] = None
    else:  # the case's first carve run is the reference of every later one
        np.save(reference, np.asarray(probabilities, dtype=np.float32))
        result["summary"] = _summary(probabilities)
        result["agreement"] = {
            "max_abs": 0.0,
            "p999_abs": 0.0,
            "mean_abs": 0.0,
            "argmax_differ": 0.0,
            "reference": True,
        }
    Path(spec["result"]).write_text(json.dumps(result))


# ---- parent: cases, runs, table --------------------------------------------------------------------------
def network_config(patch: tuple[int, int, int]):
    """carve's default network for a 1-channel, 2-class problem at ``patch`` (isotropic spacing)."""
    from carve.planning.plan import PlanOptions
    from carve.training.network import NetworkConfig, plan_topology

    options = PlanOptions()
    strides, kernels = plan_topology(patch, (1.0, 1.0, 1.0), max_stages=options.max_stages)
    return NetworkConfig(1, N_CLASSES, options.base_channels, options.max_channels, tuple(strides), tuple(kernels))


def write_weights(path: Path, patch: tuple[int, int, int], n_folds: int) -> tuple[object, int]:
    """One file with the network's configuration and ``n_folds`` seeded initialisations."""
    import torch

    from carve.training.network import UNet3D

    config = network_config(patch)
    states = []
    for fold in range(n_folds):
        torch.manual_seed(fold)
        states.append({k: v.detach().clone() for k, v in UNet3D(config).state_dict().items()})
    torch.save({"network": config.to_dict(), "state_dicts": states}, path)
    return config, sum(v.numel() for v in states[0].values())


def prepare_cases(args: argparse.Namespace, folder: Path) -> list[dict]:
    """Normalised float32 images (1, z, y, x) as .npy files, one per case."""
    from bench_inference_memory import synthetic_ct

    from carve.imaging.io import read_channels
    from carve.planning.preprocess import normalise

    cases = []
    if "real" in args.cases:
        image, geometry = read_channels(args.real_ct)
        spacing = "x".join(f"{s:g}" for s in geometry.spacing_mm[::-1])
        cases.append(("real", f"example CT @ {spacing} mm", image, args.folds))
    if "synthetic" in args.cases:
        folds = args.synthetic_folds or args.folds
        cases.append(("synthetic", "synthetic CT", synthetic_ct(tuple(args.shape))[None], folds))
    out = []
    for name, description, image, folds in cases:
        path = folder / f"{name}.npy"
        np.save(path, np.stack([normalise(channel, CT_SCHEME) for channel in image]))
        out.append({"name": name, "description": description, "shape": image.shape[1:], "folds": folds, "image": path})
    return out


def decide_precision(weights: Path, patch: tuple[int, int, int], threads: int) -> dict:
    """``predict.precision: auto`` as rule ``choose_inference_precision`` decides it, in this (parent) process,
    before and apart from the measured runs: the first fold model, the patch and carve's window batch."""
    import torch

    from carve.prediction.inference_precision import decide_inference_precision
    from carve.prediction.predict import PredictOptions

    torch.set_num_threads(threads)
    model = _build_models(torch.load(weights, map_location="cpu", weights_only=True), 1)[0]
    return decide_inference_precision("auto", model, patch, PredictOptions().batch_windows, "cpu", in_channels=1)


def reference_side(sides: list[str]) -> str:
    """The side whose first run on a case is the agreement's reference: carve in fp32, else carve."""
    return "carve-fp32" if "carve-fp32" in sides else "carve"


def run_side(side: str, case: dict, args: argparse.Namespace, folder: Path, weights: Path, run_id: int) -> dict:
    """One measured run in a fresh process of the side's Python; a failure is returned, not raised."""
    from carve.prediction.predict import PredictOptions

    result_path = folder / f"result_{run_id}.json"
    spec = {
        "side": side,
        "image": str(case["image"]),
        "weights": str(weights),
        "folds": case["folds"],
        "patch": list(args.patch),
        "overlap": args.overlap,
        "batch": PredictOptions().batch_windows,
        "threads": args.threads,
        "reference": str(folder / f"{case['name']}_reference.npy"),
        "reference_side": side == reference_side(args.sides),
        "auto_precision": args.auto_precision["precision"],
        "result": str(result_path),
    }
    spec_path = folder / f"spec_{run_id}.json"
    spec_path.write_text(json.dumps(spec))
    python = str(args.nnunet_python) if side == "nnU-Net" else sys.executable
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "nnUNet_def_n_proc": threads}
    command = [python, str(Path(__file__).resolve()), "--child", str(spec_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    except OSError as err:  # e.g. no nnU-Net environment
        return {"failed": f"{type(err).__name__}: {err}"[:200]}
    if done.returncode != 0 or not result_path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"failed": tail[0][:200]}
    return json.loads(result_path.read_text())


def machine_line(versions: dict[str, str], load_average: float | None) -> str:
    from machine import cpu_model

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = "" if load_average is None else f", load average {load_average:.1f} at the start"
    packages = ", ".join(f"{name} {v}" for name, v in versions.items())
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({usable} usable{load}), {memory:.0f} GiB RAM, "
        f"Python {platform.python_version()}; {packages}"
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in shape[::-1])


def _aims(ok: dict[str, list[dict]]) -> str:
    """issue #21's aims, read off one case: carve's call against nnU-Net's and MONAI's in time, and its added
    memory against MONAI's with the uncertainty maps (carve) and without (carve-nomaps)."""

    def median(side: str, key) -> float | None:
        runs = ok.get(side) or []
        return statistics.median(key(r) for r in runs) if runs else None

    def seconds(side):
        return median(side, lambda r: r["seconds"])

    def added(side):
        return median(side, lambda r: r["call_peak"] - r["before"])

    parts = []
    if seconds("carve") and seconds("nnU-Net"):
        parts.append(f"carve {seconds('nnU-Net') / seconds('carve'):.2f}x as fast as nnU-Net (aim on bf16: 2.5x)")
    if seconds("carve") and seconds("MONAI"):
        parts.append(f"{seconds('MONAI') / seconds('carve'):.2f}x as fast as MONAI (aim: at least 1)")
    if added("carve") and added("MONAI"):
        parts.append(f"added memory {added('carve') / added('MONAI'):.2f}x MONAI's with the maps (aim: 1.5x at most)")
    if added("carve-nomaps") and added("MONAI"):
        parts.append(f"{added('carve-nomaps') / added('MONAI'):.2f}x without them (aim: 1x at most)")
    return "; ".join(parts)


def render(args: argparse.Namespace, cases: list[dict], results: dict, meta: dict, done: int, total: int) -> str:
    from carve.prediction.inference import window_starts

    versions: dict[str, str] = {}
    for (_, side), runs in results.items():
        for r in runs:
            for key, value in r.get("versions", {}).items():
                if key != "python" and versions.setdefault(key, value) != value:  # nnU-Net's environment differs
                    versions.setdefault(f"{key} ({side})", value)
    config = meta["config"]
    lines = [
        "# Ensemble sliding-window inference: carve against MONAI and nnU-Net v2",
        "",
        f"Machine: {machine_line(versions, meta['load_average'])}.",
        "",
        f"`python bench/bench_inference.py {meta['argv']}`"
        + (f" (partial: {done} of {total} runs)" if done < total else "")
        + f"; whole run {meta['elapsed']:.0f} s. Network: carve's default CPU U-Net for 1 channel and "
        f"{N_CLASSES} classes ({config.n_stages} stages, channels {', '.join(map(str, config.channels))}, "
        f"{meta['parameters'] / 1e6:.2f} M parameters), patch {_shape_text(tuple(args.patch))} (x y z), "
        f"overlap {args.overlap:g}, Gaussian sigma 1/8 of the patch, mirroring off, {args.threads} thread(s); "
        f"carve and MONAI predict 2 windows per forward pass, nnU-Net 1. Seconds: the ensemble call only "
        f"(median of {args.repeats} alternating repeat(s)), each in a fresh process; `peak RSS`: the process's "
        "peak (`ru_maxrss`, interpreter, libraries, image and models included); `added`: the peak during the call "
        "(`VmHWM`, reset before it) minus the "
        "resident size just before the call. Ratios: the side's value over carve's (above 1: slower, or more "
        "memory, than carve).",
        "",
        "| case | folds | windows per fold | side | precision | s | s / carve | ms per window | peak RSS (MiB) | "
        "added (MiB) | added / carve | max abs diff | 99.9% abs diff | mean abs diff | argmax differs |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for case in cases:
        shape = tuple(case["shape"])
        padded = tuple(max(s, p) for s, p in zip(shape, args.patch, strict=True))
        windows = len(window_starts(padded, args.patch, args.overlap))
        ok = {side: [r for r in results.get((case["name"], side), []) if "failed" not in r] for side in args.sides}
        carve_s = statistics.median(r["seconds"] for r in ok["carve"]) if ok["carve"] else float("nan")
        carve_added = (
            statistics.median(r["call_peak"] - r["before"] for r in ok["carve"]) if ok["carve"] else float("nan")
        )
        label = f"{case['description']}, {_shape_text(shape)} ({np.prod(shape) / 1e6:.2f} M voxels)"
        for side in args.sides:
            runs = results.get((case["name"], side), [])
            failed = [r["failed"] for r in runs if "failed" in r]
            if failed:
                notes.append(f"{side} on {case['name']} failed: `{failed[-1]}`")
            if not ok[side]:
                if runs:
                    lines.append(f"| {label} | {case['folds']} | {windows} | {side} | | failed | | | | | | | | | |")
                continue
            seconds = statistics.median(r["seconds"] for r in ok[side])
            peak = max(r["peak"] for r in ok[side])
            added = statistics.median(r["call_peak"] - r["before"] for r in ok[side])
            agreement = ok[side][-1]["agreement"]
            if any(r["call_peak"] == r["peak"] == r["peak_before"] for r in ok[side]):
                notes.append(f"{side} on {case['name']}: the call did not raise the process's peak (`added` is low)")
            diffs = (
                "no reference | | | |"
                if agreement is None
                else "reference | | | |"
                if agreement.get("reference")
                else f"{agreement['max_abs']:.2g} | {agreement['p999_abs']:.1g} | {agreement['mean_abs']:.1e} | "
                f"{agreement['argmax_differ']:.2%} |"
            )
            lines.append(
                f"| {label} | {case['folds']} | {windows} | {side} | {ok[side][-1].get('precision', '')} | "
                f"{seconds:.1f} | {seconds / carve_s:.2f} | "
                f"{1000 * seconds / (windows * case['folds']):.0f} | {peak / 2**20:.0f} | {added / 2**20:.0f} | "
                f"{added / carve_added:.2f} | {diffs}"
            )
        aims = _aims(ok)
        if aims:
            notes.append(f"{case['name']}: {aims}")
        summaries = [r["summary"] for r in ok[reference_side(args.sides)] if "summary" in r]
        if summaries:
            s = summaries[0]
            notes.append(
                f"{case['name']}: carve's ensemble gives p(class 1) from {s['p1_min']:.3f} to {s['p1_max']:.3f} "
                f"(std {s['p1_std']:.3f} over voxels), argmax class 1 in {s['argmax_1']:.1%} of the voxels "
                "(random weights: the scale against which the differences are read)"
            )
    lines += [
        "",
        "Agreement (the last repeat of each side) with the case's first carve run: the largest absolute difference "
        "of the ensemble's class probabilities, its 99.9th percentile (upper edge of a logarithmic bin, 20 per "
        "decade), the mean, and the share of voxels whose argmax differs. ms per window: the call's time over "
        "windows x folds. What differs by design: carve and nnU-Net place the windows alike (evenly spread, the "
        "last flush with the border), MONAI at multiples of patch x (1 - overlap), the last one moved to the "
        "border. The Gaussians have the same sigma but different floors, which decide the weights far from every "
        "window's centre (a patch's corners: about a third of its voxels lie below 1e-4): carve's is analytic, "
        "centred on voxel n // 2 and clipped at 1e-4; MONAI's analytic, centred on (n - 1) / 2 and clipped at "
        "1e-3; nnU-Net's a filtered delta at n // 2, scaled by 10 and stored in float16, its zeros replaced by the "
        "smallest positive value (about 6e-9 after the scaling); beyond about 5.6 sigma from the centre the "
        "scaled weights are float16 subnormals and nnU-Net's float16 sums of weighted logits lose their "
        "precision, which shows where no nearer window covers a voxel (a volume's corners: on a volume of one "
        "patch, one fold, up to 0.2 in probability on 2% of the voxels). carve and MONAI (as run here) fuse each "
        "window's softmax; nnU-Net fuses logits in float16 accumulators and takes the softmax of the folds' mean "
        "logits, which differs from carve's mean of the folds' probabilities wherever the folds disagree "
        "(random initialisations disagree far more than trained folds, and their windows more than a trained "
        "network's).",
        "",
        f"carve's `predict.precision: auto` on this machine (decided once, before the measured runs, as rule "
        f"`choose_inference_precision` does): {args.auto_precision['precision']} "
        f"({args.auto_precision['precision_from']}).",
        "",
        *(f"* {note}." for note in notes),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=1, help="measured runs per side and case")
    parser.add_argument("--folds", type=int, default=5, help="fold models in the ensemble (every case)")
    parser.add_argument("--synthetic-folds", type=int, default=None, help="fold models for the synthetic case")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--cases", nargs="+", default=["real", "synthetic"], choices=["real", "synthetic"])
    parser.add_argument("--sides", nargs="+", default=list(DEFAULT_SIDES), choices=SIDES)
    parser.add_argument("--patch", type=int, nargs=3, default=PATCH, metavar=("Z", "Y", "X"))
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real-ct", type=Path, default=REAL_CT)
    parser.add_argument("--nnunet-python", type=Path, default=NNUNET_PYTHON)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if "carve" not in args.sides:
        parser.error("--sides must include carve (the reference of the ratios and of the agreement)")
    args.patch = tuple(args.patch)
    args.sides = [side for side in SIDES if side in args.sides]  # carve first, then the others, fixed order
    start = time.perf_counter()
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="carve_bench_inference_") as scratch:
        folder = Path(scratch)
        cases = prepare_cases(args, folder)
        weights = folder / "weights.pt"
        config, parameters = write_weights(weights, args.patch, max(case["folds"] for case in cases))
        args.auto_precision = decide_precision(weights, args.patch, args.threads)
        meta = {
            "config": config,
            "parameters": parameters,
            "argv": " ".join(argv),
            "elapsed": 0.0,
            "load_average": load_average,
        }
        total = len(cases) * args.repeats * len(args.sides)
        done = 0
        text = ""
        for case in cases:
            for _ in range(args.repeats):
                for side in args.sides:
                    result = run_side(side, case, args, folder, weights, done)
                    results.setdefault((case["name"], side), []).append(result)
                    done += 1
                    status = result.get("failed") or (
                        f"{result['seconds']:.1f} s, peak {result['peak'] / 2**20:.0f} MiB, "
                        f"added {(result['peak'] - result['before']) / 2**20:.0f} MiB, "
                        f"max abs diff {(result['agreement'] or {}).get('max_abs', float('nan')):.2e}"
                    )
                    print(f"[{done}/{total}] {case['name']} ({case['folds']} folds) {side}: {status}", flush=True)
                    meta["elapsed"] = time.perf_counter() - start
                    text = render(args, cases, results, meta, done, total)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
