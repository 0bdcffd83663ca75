"""Per-case preprocessing: canonical orientation, intensity normalisation and resampling to the plan's spacing.

Preprocessed cases are stored as ``.npz`` (no pickles): ``image`` (C, z, y, x) float32, ``label``
(z, y, x) uint8 when known, and the resampled grid's geometry; all in the canonical orientation
(:mod:`carve.imaging.orientation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from carve.errors import InputError
from carve.imaging.io import Geometry, atomic_write_bytes
from carve.imaging.resample import resample_image, resample_labels


def normalise(image: np.ndarray, scheme: Mapping) -> np.ndarray:
    """Normalise intensities as the plan says (``ct``: clip and z-score; ``zscore_per_image``)."""
    image = np.asarray(image, dtype=np.float32)
    name = scheme["scheme"]
    if name == "ct":
        lo, hi = scheme["clip"]
        return ((np.clip(image, lo, hi) - scheme["mean"]) / scheme["std"]).astype(np.float32)
    if name == "zscore_per_image":
        mean = float(image.mean(dtype=np.float64))
        std = float(image.std(dtype=np.float64))
        return ((image - mean) / max(std, 1e-8)).astype(np.float32)
    raise InputError(f"unknown normalisation scheme '{name}'")


def preprocess_image(image: np.ndarray, geometry: Geometry, plans: Mapping) -> tuple[np.ndarray, Geometry]:
    """Normalise each channel and resample; takes (z, y, x) or (C, z, y, x), returns (C, z, y, x) float32."""
    channels = image[None] if image.ndim == 3 else image
    schemes = plans["normalisation"]
    if len(schemes) != channels.shape[0]:
        raise InputError(f"the plans normalise {len(schemes)} channel(s), the image has {channels.shape[0]}")
    out, new_geometry = [], geometry
    for channel, scheme in zip(channels, schemes, strict=True):
        resampled, new_geometry = resample_image(
            normalise(channel, scheme), geometry, plans["target_spacing_mm"], order=3
        )
        out.append(resampled.astype(np.float32))
    return np.stack(out), new_geometry


def preprocess_labels(labels: np.ndarray, geometry: Geometry, plans: Mapping) -> np.ndarray:
    values = range(int(plans["n_classes"]))
    out, _ = resample_labels(labels, geometry, plans["target_spacing_mm"], values=values)
    return out.astype(np.uint8)


def save_case(path: Path, image: np.ndarray, geometry: Geometry, labels: np.ndarray | None = None) -> None:
    import io

    buffer = io.BytesIO()
    arrays = {
        "image": image.astype(np.float32),
        "spacing_mm": np.asarray(geometry.spacing_mm),
        "origin_mm": np.asarray(geometry.origin_mm),
        "direction": geometry.direction_matrix,
    }
    if labels is not None:
        arrays["label"] = labels.astype(np.uint8)
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_case(path: Path) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    with np.load(path, allow_pickle=False) as data:
        geometry = Geometry(tuple(data["spacing_mm"]), tuple(data["origin_mm"]), tuple(map(tuple, data["direction"])))
        label = data["label"] if "label" in data.files else None
        return data["image"], label, geometry


def preprocess_case(
    image_path: Path, label_path: Path | None, plans: Mapping, out: Path
) -> tuple[tuple[int, ...], Geometry]:
    """Preprocess a converted case (NIfTI) and store it for training, in the canonical orientation."""
    from carve.imaging.io import read_channels, read_image
    from carve.imaging.orientation import to_canonical

    image, own_geometry = read_channels(image_path)
    own_shape = image.shape[1:]
    image, geometry, turn = to_canonical(image, own_geometry)
    data, new_geometry = preprocess_image(image, geometry, plans)
    labels = None
    if label_path is not None:
        raw, _ = read_image(label_path)
        if raw.shape != own_shape:
            raise InputError(f"{label_path}: label shape {raw.shape} differs from the image's {own_shape}")
        labels = preprocess_labels(turn.to_canonical(raw), geometry, plans)
        if labels.shape != data.shape[1:]:
            raise RuntimeError(f"{label_path}: resampled label {labels.shape} != image {data.shape[1:]}")
    save_case(out, data, new_geometry, labels)
    return data.shape[1:], new_geometry
