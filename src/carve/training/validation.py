"""Whole-volume validation during training, and the training curves (TSV and PNG) of a fold.

``predict_volume`` is deliberately simpler than :mod:`carve.prediction.inference` (one pass, or non-overlapping
tiles, no
ensembling or mirroring): it scores the model between epochs cheaply; the pipeline's predictions use the full
sliding-window ensemble.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from carve.imaging.io import atomic_write_bytes, atomic_write_text
from carve.training.network import UNet3D
from carve.training.precision import autocast


@torch.no_grad()
def predict_volume(
    model: UNet3D, image: np.ndarray, patch_size: Sequence[int], device: str = "cpu", precision: str = "fp32"
) -> np.ndarray:
    """Softmax probabilities (K, z, y, x) of a whole volume: one pass when small, else non-overlapping tiles; the
    forward pass in ``precision`` (:mod:`carve.training.precision`), the softmax in float32."""
    model.eval()
    stride = np.asarray(model.config.total_stride)
    shape = np.asarray(image.shape[1:])
    padded = np.ceil(np.maximum(shape, 1) / stride).astype(int) * stride
    pad_value = image.reshape(image.shape[0], -1).min(1)
    x = np.empty((image.shape[0], *padded), dtype=np.float32)
    x[:] = pad_value[:, None, None, None]
    x[(slice(None), *(slice(0, s) for s in shape))] = image
    xt = torch.from_numpy(x)[None].to(device)
    if padded.prod() <= 4 * np.prod(patch_size):
        with autocast(device, precision):
            probs = torch.softmax(model(xt).float(), 1)[0]
    else:
        probs = torch.zeros((model.config.n_classes, *padded), device=device)
        tile = np.minimum(np.asarray(patch_size), padded)
        starts = [sorted({*range(0, p - t + 1, t), p - t}) for p, t in zip(padded, tile, strict=True)]
        for s in np.array(np.meshgrid(*starts, indexing="ij")).reshape(3, -1).T:
            box = tuple(slice(int(a), int(a + t)) for a, t in zip(s, tile, strict=True))
            with autocast(device, precision):
                probs[(slice(None), *box)] = torch.softmax(model(xt[(slice(None), slice(None), *box)]).float(), 1)[0]
    return probs[(slice(None), *(slice(0, s) for s in shape))].cpu().numpy()


def dice_per_label(prediction: np.ndarray, label: np.ndarray, n_classes: int) -> list[float]:
    """Dice of labels 1..n_classes-1 (NaN where absent from both)."""
    out = []
    for c in range(1, n_classes):
        p, t = prediction == c, label == c
        denom = p.sum() + t.sum()
        out.append(float(2 * (p & t).sum() / denom) if denom else float("nan"))
    return out


def validate_cases(
    model: UNet3D,
    cases,
    patch_size: Sequence[int],
    n_classes: int,
    device: str,
    classes: Sequence | None = None,
    precision: str = "fp32",
) -> list[float]:
    """Mean Dice per label of whole-volume predictions of the validation cases (``classes``: per case, the
    classes its dataset annotates; the others are merged into the background first)."""
    from carve.training.multidomain import restrict_probabilities

    scores = []
    for i, (img, lab) in enumerate(cases):
        probs = predict_volume(model, img, patch_size, device, precision)
        if classes is not None:
            probs = restrict_probabilities(probs, classes[i])
        scores.append(dice_per_label(probs.argmax(0), lab, n_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a label absent from every case: NaN
        return np.nanmean(np.asarray(scores, dtype=float), axis=0).tolist()


def write_curves(out_dir: Path, rows: list[list[float]], n_classes: int) -> None:
    header = ["epoch", "iterations", "seconds", "train_loss", "lr"] + [f"val_dice_{c}" for c in range(1, n_classes)]
    lines = ["\t".join(header)] + ["\t".join(f"{v:.6g}" for v in r) for r in rows]
    atomic_write_text(out_dir / "curves.tsv", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(rows, dtype=float).reshape(-1, len(header))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(data[:, 2], data[:, 3], label="train loss", color="k")
    for c in range(1, n_classes):
        ax.plot(data[:, 2], data[:, 4 + c], marker=".", label=f"val Dice {c}")
    ax.set_xlabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(out_dir / "curves.png", png.getvalue())
