"""Postprocessing of label maps, kept per label only where cross-validation shows that it helps.

Two operations, each on one label value ``k`` of a label map (uint8, 0 = background):

* ``largest_component``: voxels of ``k`` outside its largest connected component (26-connectivity: voxels
  touching by a corner are connected) become background;
* ``fill_holes``: background voxels enclosed by ``k`` (background components, 6-connected, that do not reach the
  volume's border once ``k`` is taken as a wall) become ``k``. Only background is filled: another label inside
  ``k`` (a vessel in an organ) stays.

Neither operation on ``k`` changes another label's voxels, so labels are decided independently.
:func:`decide_postprocessing` does it as nnU-Net does, greedily, from the raw cross-validation predictions and
their references: for each label, ``largest_component`` is kept when it raises the label's mean Dice over the
cross-validation cases by more than ``min_dice_gain``; then ``fill_holes`` on top of what was kept, by the same
test. The decision and every mean Dice it compared are written to ``postprocessing.json``;
:func:`apply_postprocessing` applies a decision to any prediction (test cases and the cross-validation cases
alike). Case by case, the decision sees each case once: memory is one case, whatever the number of cases.

Dice of a label is ``2|A and B| / (|A| + |B|)``, 1.0 when both masks are empty.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from carve.errors import InputError
from carve.imaging.io import atomic_write_text, read_image, write_image

log = logging.getLogger("carve.prediction.postprocess")

OPERATIONS = ("largest_component", "fill_holes")  # the order in which they are tried and applied
FORMAT = "carve-postprocessing"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PostprocessOptions:
    operations: tuple[str, ...] = OPERATIONS
    min_dice_gain: float = 0.0  # an operation is kept when mean Dice rises by more than this

    def __post_init__(self) -> None:
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown postprocessing operation(s) {unknown}; known: {list(OPERATIONS)}")
        if self.min_dice_gain < 0:
            raise ValueError(f"min_dice_gain must be >= 0, got {self.min_dice_gain}")
        object.__setattr__(self, "operations", tuple(op for op in OPERATIONS if op in self.operations))


def largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """A copy of ``labels`` with the voxels of ``value`` outside its largest 26-connected component set to 0."""
    out = np.array(labels, copy=True)
    components, n = ndimage.label(out == value, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(components[components > 0])  # index 0 counts nothing
        out[(components > 0) & (components != int(np.argmax(sizes)))] = 0
    return out


def fill_holes(labels: np.ndarray, value: int) -> np.ndarray:
    """A copy of ``labels`` with the background voxels enclosed by ``value`` set to ``value``."""
    out = np.array(labels, copy=True)
    mask = out == value
    if mask.any():
        holes = ndimage.binary_fill_holes(mask) & ~mask & (out == 0)
        out[holes] = value
    return out


_APPLY = {"largest_component": largest_component, "fill_holes": fill_holes}


def apply_operations(labels: np.ndarray, value: int, operations: Sequence[str]) -> np.ndarray:
    out = labels
    for op in operations:
        out = _APPLY[op](out, value)
    return out if out is not labels else np.array(labels, copy=True)


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(np.count_nonzero(reference)) + int(np.count_nonzero(prediction))
    return 2.0 * int(np.count_nonzero(reference & prediction)) / total if total else 1.0


def candidate_chains(operations: Sequence[str]) -> list[tuple[str, ...]]:
    """Every chain the greedy decision may compare: ordered subsets of ``operations`` (empty first)."""
    chains: list[tuple[str, ...]] = [()]
    for op in operations:
        chains += [(*chain, op) for chain in chains]
    return chains


def _chain_name(chain: Sequence[str]) -> str:
    return "+".join(chain) if chain else "none"


def case_dice_table(
    reference: np.ndarray, prediction: np.ndarray, values: Sequence[int], operations: Sequence[str]
) -> dict[int, dict[str, float]]:
    """Per label value: the Dice of each candidate chain of operations applied to ``prediction``."""
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    table: dict[int, dict[str, float]] = {}
    for value in values:
        ref = reference == value
        table[value] = {}
        for chain in candidate_chains(operations):
            table[value][_chain_name(chain)] = dice(ref, apply_operations(prediction, value, chain) == value)
    return table


@dataclass
class _Decision:
    apply: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


def decide_from_tables(
    tables: Sequence[Mapping[int, Mapping[str, float]]], values: Sequence[int], options: PostprocessOptions
) -> dict[int, _Decision]:
    """The greedy decision per label from per-case Dice tables (:func:`case_dice_table`)."""
    if not tables:
        raise InputError("deciding postprocessing needs at least one cross-validation case")
    decisions = {}
    for value in values:
        decision = _Decision()
        for op in options.operations:
            before = float(np.mean([t[value][_chain_name(decision.apply)] for t in tables]))
            after = float(np.mean([t[value][_chain_name([*decision.apply, op])] for t in tables]))
            kept = after - before > options.min_dice_gain
            decision.steps.append({"operation": op, "mean_dice_before": before, "mean_dice_after": after, "kept": kept})
            if kept:
                decision.apply.append(op)
        decisions[value] = decision
    return decisions


def decide_postprocessing(
    predictions: Sequence[Path],
    references: Sequence[Path],
    label_names: Mapping[int, str],
    options: PostprocessOptions,
    out: Path,
) -> dict[str, Any]:
    """Decide per label from the raw cross-validation predictions and their references; write ``out`` (JSON)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} prediction(s) but {len(references)} reference(s)")
    values = sorted(int(v) for v in label_names)
    tables, cases = [], []
    for pred_path, ref_path in zip(predictions, references, strict=True):
        prediction, _ = read_image(pred_path)
        reference, _ = read_image(ref_path)
        if prediction.shape != reference.shape:
            raise ValueError(f"{pred_path} {prediction.shape} and {ref_path} {reference.shape} differ in shape")
        tables.append(case_dice_table(reference, prediction.astype(np.uint8), values, options.operations))
        cases.append(Path(pred_path).name.removesuffix(".nii.gz"))
    decisions = decide_from_tables(tables, values, options)
    chains = [_chain_name(c) for c in candidate_chains(options.operations)]
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "operations_tried": list(options.operations),
        "min_dice_gain": options.min_dice_gain,
        "cases": cases,
        "labels": {
            str(v): {
                "name": label_names[v],
                "apply": decisions[v].apply,
                "steps": decisions[v].steps,
                "mean_dice": {c: float(np.mean([t[v][c] for t in tables])) for c in chains},
            }
            for v in values
        },
    }
    for v in values:
        log.info("label %d (%s): %s", v, label_names[v], ", ".join(decisions[v].apply) or "no postprocessing")
    atomic_write_text(out, json.dumps(document, indent=2) + "\n")
    return document


def load_postprocessing(path: Path) -> dict[int, tuple[str, ...]]:
    """The operations per label value of a ``postprocessing.json``."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read postprocessing ({err})") from None
    if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
        raise InputError(f"{path}: not a {FORMAT} file of version {FORMAT_VERSION}")
    plan = {int(v): tuple(entry["apply"]) for v, entry in document["labels"].items()}
    unknown = sorted({op for ops in plan.values() for op in ops} - set(OPERATIONS))
    if unknown:
        raise InputError(f"{path}: unknown operation(s) {unknown}")
    return plan


def apply_postprocessing(labels: np.ndarray, plan: Mapping[int, Sequence[str]]) -> np.ndarray:
    """``labels`` with each label's operations applied (a copy; labels without operations are unchanged)."""
    out = np.array(labels, copy=True)
    for value, operations in sorted(plan.items()):
        if operations:
            out = apply_operations(out, value, operations)
    return out


def postprocess_file(prediction: Path, postprocessing: Path, out: Path) -> dict[int, int]:
    """Apply ``postprocessing.json`` to a label file, in its geometry; returns voxels changed per label value."""
    labels, geometry = read_image(prediction)
    plan = load_postprocessing(postprocessing)
    result = apply_postprocessing(labels, plan)
    changed = {v: int(np.count_nonzero((labels == v) != (result == v))) for v in sorted(plan)}
    log.info("%s: voxels changed per label %s", Path(prediction).name, changed)
    write_image(out, result.astype(labels.dtype, copy=False), geometry)
    return changed
