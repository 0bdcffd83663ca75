"""Random training patches with foreground oversampling.

A case is ``(image (C, z, y, x) float32, label (z, y, x) uint8)``. A fraction of the patches is centred on a
random foreground voxel of a random class present in the case (kept inside the volume where the volume is large
enough); the rest are placed uniformly. Volumes smaller than the patch are padded: the image with each channel's
minimum (the "outside" intensity of a normalised scan), the label with background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_LOCATIONS_PER_CLASS = 20_000


@dataclass(frozen=True)
class CaseIndex:
    """Per-case data kept by the sampler: foreground locations per class and the pad value per channel."""

    shape: tuple[int, int, int]
    locations: dict[int, np.ndarray]  # class -> (N, 3) int32 voxel indices
    pad_values: np.ndarray  # (C,) float32


def index_case(
    image: np.ndarray, label: np.ndarray, n_classes: int, rng: np.random.Generator, name: str = "case"
) -> CaseIndex:
    """Foreground voxel locations per present class (at most ``MAX_LOCATIONS_PER_CLASS``, a random subset)."""
    if image.ndim != 4 or label.ndim != 3 or image.shape[1:] != label.shape:
        raise ValueError(f"{name}: image (C, z, y, x) {image.shape} and label (z, y, x) {label.shape} do not match")
    locations = {}
    for c in range(1, n_classes):
        where = np.argwhere(label == c).astype(np.int32)
        if len(where) > MAX_LOCATIONS_PER_CLASS:
            where = where[np.sort(rng.choice(len(where), MAX_LOCATIONS_PER_CLASS, replace=False))]
        if len(where):
            locations[c] = where
    pad = image.reshape(image.shape[0], -1).min(axis=1).astype(np.float32)
    return CaseIndex(tuple(int(s) for s in label.shape), locations, pad)  # type: ignore[arg-type]


def crop(
    image: np.ndarray, label: np.ndarray, start: Sequence[int], size: Sequence[int], pad_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The box ``[start, start + size)`` of image and label; parts outside the volume are padded."""
    start = np.asarray(start, dtype=int)
    size = np.asarray(size, dtype=int)
    shape = np.asarray(label.shape)
    lo, hi = np.maximum(start, 0), np.minimum(start + size, shape)
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(int(a), int(b)) for a, b in zip(lo - start, hi - start, strict=True))
    if (lo == start).all() and (hi == start + size).all():
        return image[(slice(None), *src)].copy(), label[src].copy()
    img = np.empty((image.shape[0], *size), dtype=image.dtype)
    img[:] = pad_values.astype(image.dtype)[:, None, None, None]
    lab = np.zeros(tuple(size), dtype=label.dtype)
    if (hi > lo).all():
        img[(slice(None), *dst)] = image[(slice(None), *src)]
        lab[dst] = label[src]
    return img, lab


class PatchSampler:
    """Draws batches of patches from a list of cases with a seeded ``numpy.random.Generator``."""

    def __init__(
        self,
        cases: Sequence[tuple[np.ndarray, np.ndarray]],
        patch_size: Sequence[int],
        n_classes: int,
        foreground_fraction: float = 0.33,
        rng: np.random.Generator | None = None,
    ):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.n_classes = n_classes
        self.foreground_fraction = foreground_fraction
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.index = [index_case(img, lab, n_classes, self.rng, f"case {i}") for i, (img, lab) in enumerate(cases)]
        channels = {img.shape[0] for img, _ in self.cases}
        if len(channels) != 1:
            raise ValueError(f"all cases need the same number of channels, got {sorted(channels)}")

    def _start(self, case: CaseIndex, foreground: bool) -> np.ndarray:
        shape, size = np.asarray(case.shape), np.asarray(self.patch_size)
        lo, hi = np.minimum(0, shape - size), np.maximum(0, shape - size)  # allowed starts (inclusive)
        if foreground and case.locations:
            classes = sorted(case.locations)
            c = classes[int(self.rng.integers(len(classes)))]
            voxel = case.locations[c][int(self.rng.integers(len(case.locations[c])))]
            return np.clip(voxel - size // 2, lo, hi)
        return np.array([int(self.rng.integers(a, b + 1)) for a, b in zip(lo, hi, strict=True)])

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(images (B, C, *patch) float32, labels (B, *patch) uint8)``.

        The number of foreground-centred patches is ``batch_size * foreground_fraction`` rounded at random
        (so its expectation is exact); they come last in the batch.
        """
        expected = batch_size * self.foreground_fraction
        n_fg = int(np.floor(expected + self.rng.random())) if expected % 1 else int(expected)
        images, labels = [], []
        for i in range(batch_size):
            k = int(self.rng.integers(len(self.cases)))
            start = self._start(self.index[k], foreground=i >= batch_size - n_fg)
            img, lab = crop(*self.cases[k], start, self.patch_size, self.index[k].pad_values)
            images.append(img)
            labels.append(lab)
        return np.stack(images).astype(np.float32, copy=False), np.stack(labels)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
