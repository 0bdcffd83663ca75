"""Dataset fingerprint and experiment plan (``plans.json``).

The plan fixes everything the data decides: target spacing (median per axis; for strongly anisotropic
data the coarse axis takes the 10th percentile, as nnU-Net does), intensity normalisation by modality
(CT: clip to the foreground 0.5-99.5 percentiles and z-score with foreground statistics; MR and others:
per-image z-score), patch size fitted to the median resampled shape and to a voxel budget for the training
device, the network topology, and the canonical axes mirrored in training (``mirror_axes``; prediction flips
exactly those, :mod:`carve.imaging.orientation`). Every spatial entry is in the canonical axis order. A user may edit
``plans.json`` and rerun: training reads it as written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import carve
from carve.errors import CarveError
from carve.imaging.io import atomic_write_text, read_channels, read_image
from carve.imaging.orientation import CONVENTION, canonical_spacing_and_shape, check_mirror_axes
from carve.imaging.resample import ANISOTROPY_RATIO, target_shape
from carve.planning.topology import NetworkConfig, fit_patch_size, plan_topology, training_memory_bytes

PLANS_VERSION = 3  # 2: channels, normalisation per channel; 3: canonical orientation, planned mirror axes
FOREGROUND_SAMPLES_PER_CASE = 10_000


class PlanError(CarveError, ValueError):
    """Plans that cannot be made or used."""


@dataclass(frozen=True)
class PlanOptions:
    modality: str = "MR"
    channels: tuple[tuple[str, str], ...] = ()  # (name, modality) per input channel; empty: one channel
    max_patch_voxels: int | None = None  # compute budget of a patch; None: by device (CPU 48x64x48, CUDA 128^3)
    device: str = "cpu"  # the device that trains: cpu, cuda, or auto (CUDA when the planning machine has it)
    memory_gb: float | None = None  # memory one training job may use; None: a share of the device's memory
    batch_size: int = 2
    base_channels: int = 16
    max_channels: int = 256
    max_stages: int = 5
    target_spacing_mm: tuple[float, float, float] | None = None  # override the fingerprint's choice
    mirror_axes: tuple[
        int, ...
    ] = ()  # canonical axes flipped in training and so at test time (carve.imaging.orientation)
    seed: int = 0


CPU_PATCH_VOXELS = 48 * 64 * 48  # on a CPU the compute budget, not memory, limits the patch
CUDA_PATCH_VOXELS = 128**3
CPU_MEMORY_SHARE = 0.25  # of physical RAM: several jobs may run side by side
CUDA_MEMORY_SHARE = 0.8  # of the GPU's memory


def device_memory_gb(device: str) -> float:
    """Memory a training job may use on ``device``: a share of the GPU's or of the machine's physical memory
    (totals, not what is free at this moment, so that the same machine always plans the same).

    A GPU is asked through torch, as training will use it: rule ``plan`` runs in envs/torch.yaml for this."""
    if device.startswith("cuda"):
        import torch  # only for a GPU: planning for the CPU needs no torch

        return CUDA_MEMORY_SHARE * torch.cuda.get_device_properties(0).total_memory / 2**30
    return CPU_MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def fit_to_memory(
    median_shape: Sequence[int], spacing: Sequence[float], options: PlanOptions, n_channels: int, n_classes: int
) -> tuple[tuple[int, int, int], list, list, str, float, float]:
    """The largest patch within the compute budget whose training iteration fits the device's memory.

    Returns (patch, strides, kernels, device, memory budget GiB, estimated GiB).

    The topology and memory estimate are torch-free (:mod:`carve.planning.topology`); the device is not: ``auto`` means
    "CUDA if torch, the library that trains, sees a GPU here", and a GPU's memory is what torch reports. So the
    device is resolved here, with torch, and rule ``plan`` runs in envs/torch.yaml (which has every package
    planning needs), not in envs/imaging.yaml: answering without torch (nvidia-smi, /proc) could disagree with
    what training sees (a CPU-only torch build, CUDA_VISIBLE_DEVICES). Planning for ``device: cpu`` never
    imports torch."""
    device = options.device
    if device == "auto":
        import torch  # see above: the env of rule plan has it

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    max_voxels = options.max_patch_voxels or (CUDA_PATCH_VOXELS if cuda else CPU_PATCH_VOXELS)
    budget_gb = options.memory_gb if options.memory_gb is not None else device_memory_gb(device)
    while True:
        patch = fit_patch_size(median_shape, spacing, max_voxels, max_stages=options.max_stages)
        strides, kernels = plan_topology(patch, spacing, max_stages=options.max_stages)
        net = NetworkConfig(n_channels, n_classes, options.base_channels, options.max_channels, strides, kernels)
        need_gb = training_memory_bytes(net, patch, options.batch_size) / 2**30
        if need_gb <= budget_gb or max_voxels <= 512:
            break
        max_voxels = int(max_voxels * 0.8)
    if need_gb > budget_gb:
        raise PlanError(
            f"even a {patch} patch at batch {options.batch_size} needs {need_gb:.2f} GiB, more than the "
            f"{budget_gb:.2f} GiB for training on {device}; lower plan.batch_size or plan.base_channels, "
            "or raise plan.memory_gb"
        )
    return patch, strides, kernels, device, budget_gb, need_gb


def fingerprint(images: Sequence[Path], labels: Sequence[Path], seed: int = 0) -> dict:
    """Spacing, shapes (both in the canonical axis order of :mod:`carve.imaging.orientation`) and foreground intensity
    statistics (per channel) of the training cases."""
    rng = np.random.default_rng(seed)
    spacings, shapes = [], []
    samples: list[list[np.ndarray]] = []
    n_channels = None
    for image_path, label_path in zip(images, labels, strict=True):
        image, geometry = read_channels(image_path)
        if n_channels is None:
            n_channels = image.shape[0]
            samples = [[] for _ in range(n_channels)]
        elif image.shape[0] != n_channels:
            raise PlanError(f"{image_path}: {image.shape[0]} channel(s), the first case has {n_channels}")
        label, _ = read_image(label_path)
        spacing, shape = canonical_spacing_and_shape(geometry, image.shape[1:])  # what the models see
        spacings.append(list(spacing))
        shapes.append(list(shape))
        foreground = label > 0
        take = None
        for c in range(n_channels):
            fg = image[c][foreground].astype(np.float64)
            if fg.size:
                if take is None:  # the same voxels in every channel
                    take = rng.choice(fg.size, size=min(fg.size, FOREGROUND_SAMPLES_PER_CASE), replace=False)
                samples[c].append(fg[take])
    stats = []
    for per_case in samples:
        fg = np.concatenate(per_case) if per_case else np.zeros(1)
        stats.append(
            {
                "mean": float(fg.mean()),
                "std": float(fg.std()),
                "percentile_00_5": float(np.percentile(fg, 0.5)),
                "percentile_99_5": float(np.percentile(fg, 99.5)),
            }
        )
    return {"cases": len(spacings), "spacings_mm": spacings, "shapes_vox": shapes, "foreground_intensity": stats}


def normalisation_for(modality: str, fg: Mapping) -> dict:
    """CT: clip to the foreground 0.5-99.5 percentiles and z-score with foreground statistics; else per image."""
    if modality.upper() == "CT":
        return {
            "scheme": "ct",
            "clip": [fg["percentile_00_5"], fg["percentile_99_5"]],
            "mean": fg["mean"],
            "std": max(fg["std"], 1e-6),
        }
    return {"scheme": "zscore_per_image"}


def choose_target_spacing(spacings_mm: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    s = np.asarray(spacings_mm, dtype=float)
    target = np.median(s, axis=0)
    coarse = int(np.argmax(target))
    others = np.delete(target, coarse)
    if target[coarse] > ANISOTROPY_RATIO * others.max():
        target[coarse] = max(np.percentile(s[:, coarse], 10), others.max())
    return tuple(float(round(t, 6)) for t in target)


def make_plans(fp: Mapping, label_names: Mapping[int, str], options: PlanOptions) -> dict:
    spacing = options.target_spacing_mm or choose_target_spacing(fp["spacings_mm"])
    resampled = [target_shape(sh, sp, spacing) for sh, sp in zip(fp["shapes_vox"], fp["spacings_mm"], strict=True)]
    median_shape = tuple(int(v) for v in np.median(np.asarray(resampled), axis=0))
    modality = options.modality.upper()
    stats = fp["foreground_intensity"]
    channels = [(n, (m or modality).upper()) for n, m in options.channels] or [("image", modality)]
    if len(channels) != len(stats):
        raise PlanError(f"the config names {len(channels)} channel(s) but the images have {len(stats)}")
    values = sorted(int(v) for v in label_names)
    if values != list(range(1, len(values) + 1)):
        raise PlanError(f"label values must be 1..N without gaps, got {values}")
    try:
        mirror_axes = check_mirror_axes(options.mirror_axes, label_names)
    except ValueError as err:
        raise PlanError(f"plan.mirror_axes: {err}") from None
    patch, strides, kernels, device, budget_gb, need_gb = fit_to_memory(
        median_shape, spacing, options, len(channels), len(values) + 1
    )
    return {
        "plans_version": PLANS_VERSION,
        "carve_version": carve.__version__,
        "modality": modality,
        "channels": [{"name": n, "modality": m} for n, m in channels],
        "labels": {str(v): label_names[v] for v in values},
        "n_classes": len(values) + 1,
        "orientation": CONVENTION,
        "mirror_axes": list(mirror_axes),
        "target_spacing_mm": list(spacing),
        "median_shape_vox": list(median_shape),
        "patch_size": [int(p) for p in patch],
        "batch_size": int(options.batch_size),
        "memory": {"device": device, "budget_gib": round(budget_gb, 1), "estimated_gib": round(need_gb, 2)},
        "network": {
            "base_channels": int(options.base_channels),
            "max_channels": int(options.max_channels),
            "strides": [list(map(int, s)) for s in strides],
            "kernel_sizes": [list(map(int, k)) for k in kernels],
        },
        "normalisation": [normalisation_for(m, fg) for (_, m), fg in zip(channels, stats, strict=True)],
        "fingerprint": dict(fp),
    }


def write_plans(path: Path, plans: Mapping) -> None:
    atomic_write_text(path, json.dumps(plans, indent=2) + "\n")


def load_plans(path: Path) -> dict:
    try:
        plans = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PlanError(f"{path}: cannot read plans ({err})") from None
    if plans.get("plans_version") != PLANS_VERSION:
        raise PlanError(
            f"{path}: plans version {plans.get('plans_version')} is not {PLANS_VERSION}; rerun the plan rule"
        )
    for key in ("target_spacing_mm", "patch_size", "normalisation", "n_classes", "network", "channels", "mirror_axes"):
        if key not in plans:
            raise PlanError(f"{path}: plans lack '{key}'")
    return plans


def dataset_plans(
    images: Sequence[Path], labels: Sequence[Path], datasets: Mapping[str, Mapping], options: PlanOptions
) -> dict:
    """Per dataset of a multi-dataset run: its normalisation per channel (its own modality and foreground
    statistics) and the union classes it annotates. ``datasets``: name -> {modality, cases (indices into
    ``images``), classes}."""
    out = {}
    for name, spec in datasets.items():
        idx = [int(i) for i in spec["cases"]]
        if not idx:
            raise PlanError(f"dataset '{name}' has no training case")
        fp = fingerprint([images[i] for i in idx], [labels[i] for i in idx], options.seed)
        modality = str(spec.get("modality") or options.modality).upper()
        channels = [(m or modality).upper() for _, m in options.channels] or [modality]
        out[name] = {
            "modality": modality,
            "cases": len(idx),
            "classes": sorted(int(c) for c in spec["classes"]),
            "labels": {str(k): str(v) for k, v in (spec.get("labels") or {}).items()},  # its own values -> names
            "normalisation": [
                normalisation_for(m, fg) for m, fg in zip(channels, fp["foreground_intensity"], strict=True)
            ],
        }
    return out


def plans_for_dataset(plans: Mapping, dataset: str | None) -> dict:
    """The plans as a case of ``dataset`` uses them: its dataset's normalisation and ``classes`` (the union
    classes its predictions may take). Plans of one dataset are returned as they are."""
    datasets = plans.get("datasets") or {}
    if not datasets:
        return dict(plans)
    if dataset is None:
        raise PlanError(f"the plans cover datasets {sorted(datasets)}: name the case's dataset")
    if dataset not in datasets:
        raise PlanError(f"dataset '{dataset}' is not among the plans' datasets {sorted(datasets)}")
    own = datasets[dataset]
    return {**plans, "normalisation": own["normalisation"], "classes": own["classes"]}


def dataset_plans_for(
    images: Sequence[Path],
    labels: Sequence[Path],
    label_names: Mapping[int, str],
    options: PlanOptions,
    datasets: Mapping[str, Mapping] | None = None,
) -> dict:
    """The plans of the training cases (fingerprint, then :func:`make_plans`); with ``datasets`` (several
    datasets, one network) also each dataset's normalisation and classes (:func:`dataset_plans`)."""
    plans = make_plans(fingerprint(images, labels, options.seed), label_names, options)
    if datasets:
        plans["datasets"] = dataset_plans(images, labels, datasets, options)
    return plans


def plan_dataset(
    images: Sequence[Path],
    labels: Sequence[Path],
    label_names: Mapping[int, str],
    options: PlanOptions,
    out: Path,
    datasets: Mapping[str, Mapping] | None = None,
) -> dict:
    """:func:`dataset_plans_for`, written to ``out`` (without the training budget, which rule ``plan`` adds:
    :func:`carve.training.budget.plan_training_run`)."""
    plans = dataset_plans_for(images, labels, label_names, options, datasets)
    write_plans(out, plans)
    return plans
