"""Predict one case with a fold ensemble and write labels and uncertainty in the case's own geometry."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carve.io import atomic_write_text, read_channels, write_image
from carve.preprocess import preprocess_image
from carve.resample import resize_image, resize_probabilities

log = logging.getLogger("carve.predict")


@dataclass(frozen=True)
class PredictOptions:
    overlap: float = 0.5
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    batch_windows: int = 2


def select_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def predict_case(
    case: str,
    image_path: Path,
    model_paths: Sequence[Path],
    plans: Mapping,
    out_labels: Path,
    out_uncertainty: Path,
    out_scores: Path,
    options: PredictOptions = PredictOptions(),
    device: str = "auto",
    threads: int = 1,
) -> dict[str, float]:
    """Ensemble the models over one image; labels and normalised entropy go back to the original grid."""
    import torch

    from carve.inference import sliding_window_probabilities
    from carve.network import load_model
    from carve.uncertainty import case_uncertainty_scores, uncertainty_map

    torch.set_num_threads(max(1, int(threads)))
    device = select_device(device)
    image, geometry = read_channels(image_path)  # (C, z, y, x)
    data, _ = preprocess_image(image, geometry, plans)
    models = [load_model(p, device=device)[0] for p in model_paths]
    log.info(
        "case '%s': %d model(s), plan grid %s, mirror axes %s, device %s",
        case,
        len(models),
        data.shape[1:],
        options.mirror_axes,
        device,
    )
    result = sliding_window_probabilities(
        models,
        data,
        tuple(plans["patch_size"]),
        n_classes=int(plans["n_classes"]),
        overlap=options.overlap,
        mirror_axes=tuple(options.mirror_axes),
        batch_windows=options.batch_windows,
        device=device,
    )
    probabilities = resize_probabilities(result.mean_probabilities, image.shape[1:])
    labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    del probabilities
    uncertainty = resize_image(uncertainty_map(result), image.shape[1:], geometry.spacing_mm, order=1)
    scores = case_uncertainty_scores(
        result.mean_probabilities, result.mean_entropy, result.std, np.argmax(result.mean_probabilities, axis=0)
    )
    write_image(out_uncertainty, np.clip(uncertainty, 0, 1).astype(np.float32), geometry)
    row = {"case": case, "members": int(result.n_members), **{k: float(v) for k, v in scores.items()}}
    atomic_write_text(out_scores, pd.DataFrame([row]).to_csv(sep="\t", index=False))
    write_image(out_labels, labels, geometry)
    counts = {int(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True), strict=True)}
    log.info("case '%s': voxels per label value %s", case, counts)
    return row
