"""The label space of a run over several datasets, without torch: what the torch-free parts need (the
workflow's parsing in rules/common.smk, rule ``convert_label`` in envs/imaging.yaml). The training and
prediction parts of several datasets, one network, are in :mod:`carve.training.multidomain`, which re-exports these.

Each dataset names its own labels (``{value: name}`` in its own files). The run's labels are their union by name,
numbered 1..N in the order the datasets are configured; a name shared by two datasets is one class. Conversion
maps each case's label values into the union (:func:`union_values`, :func:`remap_labels`); a case of one dataset
receives only its dataset's classes (:func:`restrict_probabilities`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the run: its name, its own label values -> names, and its modality (normalisation)."""

    name: str
    labels: Mapping[int, str]
    modality: str = "MR"


def union_label_names(datasets: Sequence[DatasetSpec]) -> dict[int, str]:
    """The run's labels: every dataset's label names, once each, numbered 1..N in configuration order."""
    names: list[str] = []
    for spec in datasets:
        for _, name in sorted(spec.labels.items()):
            if name not in names:
                names.append(name)
    return {i + 1: name for i, name in enumerate(names)}


def union_values(spec: DatasetSpec, union: Mapping[int, str]) -> dict[int, int]:
    """The dataset's own label value -> its value in the union label space."""
    by_name = {name: value for value, name in union.items()}
    return {int(value): by_name[name] for value, name in spec.labels.items()}


def annotated_classes(spec: DatasetSpec, union: Mapping[int, str]) -> tuple[int, ...]:
    """The union classes (background 0 included) that the dataset annotates."""
    return (0, *sorted(union_values(spec, union).values()))


def class_mask(classes: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes,) bool, True at ``classes``."""
    mask = np.zeros(n_classes, dtype=bool)
    mask[list(classes)] = True
    return mask


def remap_labels(labels: np.ndarray, to_values: Mapping[int, int]) -> np.ndarray:
    """Map label values through ``to_values`` (0 stays 0); values it does not name are an error of the caller."""
    lut = np.zeros(256, dtype=np.uint8)
    for src, dst in to_values.items():
        lut[int(src)] = int(dst)
    return lut[labels.astype(np.uint8)]


def restrict_probabilities(probs: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Class probabilities (K, ...) with the classes outside ``classes`` added to the background (in place)."""
    drop = [k for k in range(probs.shape[0]) if k not in set(classes)]
    if drop:
        probs[0] += probs[drop].sum(0)
        probs[drop] = 0
    return probs
