"""Seeded k-fold split of the training cases, written once to ``splits.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from carve.errors import InputError
from carve.imaging.io import atomic_write_text


def kfold_splits(
    cases: Sequence[str], folds: int, seed: int, groups: Mapping[str, str] | None = None
) -> list[dict[str, list[str]]]:
    """Split ``cases`` into ``folds`` folds of near-equal size; the order of ``cases`` does not matter.

    With ``groups`` (case -> dataset) the split is stratified: each dataset's cases are dealt out over the folds
    in turn, continuing where the previous dataset stopped, so every fold holds out a share of every dataset."""
    names = sorted(set(cases))
    if len(names) != len(cases):
        raise InputError("case ids must be unique")
    if folds < 2 or folds > len(names):
        raise InputError(f"need 2 <= folds <= number of training cases ({len(names)}), got {folds}")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(len(names))
        shuffled = [names[i] for i in order]
    else:
        missing = [c for c in names if c not in groups]
        if missing:
            raise InputError(f"cases without a dataset: {missing}")
        shuffled = []
        for group in sorted(set(groups[c] for c in names)):
            members = [c for c in names if groups[c] == group]
            shuffled += [members[i] for i in rng.permutation(len(members))]
    held = [sorted(shuffled[k::folds]) for k in range(folds)]
    return [{"train": sorted(set(names) - set(h)), "val": h} for h in held]


def write_splits(
    path: Path, cases: Sequence[str], folds: int, seed: int, groups: Mapping[str, str] | None = None
) -> list[dict[str, list[str]]]:
    splits = kfold_splits(cases, folds, seed, groups)
    atomic_write_text(path, json.dumps({"seed": seed, "folds": splits}, indent=2) + "\n")
    return splits


def load_splits(path: Path) -> list[dict[str, list[str]]]:
    return json.loads(Path(path).read_text())["folds"]


def fold_of(case: str, splits: Sequence[dict[str, list[str]]]) -> int:
    for k, fold in enumerate(splits):
        if case in fold["val"]:
            return k
    raise KeyError(f"case '{case}' is held out by no fold")
