"""Ensemble members beyond the fold models, kept only where cross-validation shows that they pay.

A test case's members are the fold models, each under every mirroring training made (``plan.mirror_axes``) and on
every radial projection (``predict.projections``). The mirrorings and projections cost inference time and, on
carve's data, did not always help: on the demo two projections lowered the cross-validation Dice and halved the
gap that the best case score closes (docs/uncertainty.md). So where a run configures any, they are judged like
postprocessing, on the run's own cross-validation:

* every training case is predicted by the fold that held it out twice, *plain* (the fold's model alone) and
  *extra* (with the mirrorings and projections), each through the pipeline's own prediction;
  :func:`comparison_row` scores both against the reference: mean foreground Dice and the case scores that
  ``predict.review_score: auto`` chooses from (:data:`carve.evaluation.calibration.REVIEW_CANDIDATES`);
* :func:`decide_members` pools the cases: the extra members are kept when they raise the mean Dice by more than
  ``min_dice_gain`` without lowering the failure detection, or improve the failure detection (the largest share
  of the AURC gap between a random and the optimal ranking that a candidate score closes) without lowering the
  mean Dice; otherwise every prediction (cross-validation and test) uses the fold models alone.

The decision and every number compared go to ``members.json``; :func:`options_after` applies it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carve.errors import InputError
from carve.evaluation.calibration import REVIEW_CANDIDATES
from carve.evaluation.failure import gap_closed, risk_score
from carve.evaluation.metrics import overlap_metrics
from carve.imaging.io import atomic_write_text
from carve.prediction.predict import PredictOptions

VARIANTS = ("plain", "extra")
NONE_CONFIGURED = "no mirroring planned and no projections: the fold models are the only members"


def has_extra(extra: Mapping[str, Any]) -> bool:
    return bool(extra["mirror_axes"]) or int(extra["projections"]) > 0


def plain(options: PredictOptions) -> PredictOptions:
    """The options without mirroring or projections: the fold models alone."""
    return replace(options, mirror_axes=(), projections=0)


def options_after(options: PredictOptions, decision: Mapping[str, Any]) -> PredictOptions:
    """``options`` as ``members.json`` (``decision``) leaves them: as they are when the extra members are kept,
    else :func:`plain`."""
    return options if decision.get("keep") else plain(options)


def mean_foreground_dice(reference: np.ndarray, prediction: np.ndarray, label_values: Sequence[int]) -> float:
    """Mean over the labels of their Dice (carve.evaluation.metrics' conventions for empty masks)."""
    return float(np.mean([overlap_metrics(reference == v, prediction == v)["dice"] for v in label_values]))


def comparison_row(
    case: str,
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    scores: Mapping[str, Mapping[str, float]],
    label_values: Sequence[int],
) -> dict[str, Any]:
    """One training case's line of the comparison: per variant (:data:`VARIANTS`), the mean foreground Dice of its
    raw prediction and its candidate case scores (``<variant>_dice``, ``<variant>_<score>``)."""
    row: dict[str, Any] = {"case": case}
    for variant in VARIANTS:
        row[f"{variant}_members"] = int(scores[variant]["members"])
        row[f"{variant}_dice"] = mean_foreground_dice(reference, predictions[variant], label_values)
        for score in REVIEW_CANDIDATES:
            row[f"{variant}_{score}"] = float(scores[variant].get(score, math.nan))
    return row


def _best_gap(table: pd.DataFrame, variant: str) -> tuple[float, str | None]:
    """The largest gap closed by a candidate score of ``variant`` (NaN, None where none is defined)."""
    dice = table[f"{variant}_dice"].to_numpy(float)
    best, name = math.nan, None
    for score in REVIEW_CANDIDATES:
        values = table[f"{variant}_{score}"].to_numpy(float)
        if not np.isfinite(values).all():
            continue
        value = gap_closed(risk_score(score, values), dice)
        if np.isfinite(value) and not (value <= best):
            best, name = float(value), score
    return best, name


def decide_members(table: pd.DataFrame, extra: Mapping[str, Any], min_dice_gain: float = 0.0) -> dict[str, Any]:
    """Keep the extra members or not, from the comparison rows of the cross-validation cases (see the module
    docstring); the decision with the numbers it compared."""
    decision: dict[str, Any] = {"extra_members": dict(extra), "keep": False, "cases": int(len(table))}
    if not has_extra(extra):
        return decision | {"reason": NONE_CONFIGURED}
    if table.empty:
        raise InputError("members: extra members are configured but no cross-validation case was compared")
    dice = {v: float(table[f"{v}_dice"].mean()) for v in VARIANTS}
    gaps = {v: _best_gap(table, v) for v in VARIANTS}
    dice_gain = dice["extra"] - dice["plain"]
    plain_gap, extra_gap = gaps["plain"][0], gaps["extra"][0]
    detection_gain = extra_gap - plain_gap if np.isfinite(plain_gap) and np.isfinite(extra_gap) else math.nan
    better_dice = dice_gain > min_dice_gain
    better_detection = bool(np.isfinite(detection_gain) and detection_gain > 0)
    no_worse_dice = dice_gain >= 0
    no_worse_detection = not np.isfinite(detection_gain) or detection_gain >= 0
    keep = (better_dice and no_worse_detection) or (better_detection and no_worse_dice)
    if keep:
        reason = "they raise the mean Dice" if better_dice else "they improve the failure detection"
    elif not no_worse_dice:
        reason = "they lower the mean cross-validation Dice"
    elif not no_worse_detection:
        reason = "they lower the failure detection (the best candidate score closes less of the AURC gap)"
    else:
        reason = "they improve neither the mean Dice nor the failure detection"
    return decision | {
        "keep": bool(keep),
        "reason": reason,
        "min_dice_gain": float(min_dice_gain),
        "mean_dice": {v: round(dice[v], 6) for v in VARIANTS},
        "best_gap_closed": {v: _rounded(gaps[v][0]) for v in VARIANTS},
        "best_score": {v: gaps[v][1] for v in VARIANTS},
        "members": {v: sorted({int(m) for m in table[f"{v}_members"]}) for v in VARIANTS},
    }


def _rounded(value: float) -> float | None:
    return round(value, 6) if np.isfinite(value) else None


def decide_members_files(comparisons: Sequence[Path], extra: Mapping[str, Any], out: Path, min_dice_gain: float = 0.0):
    """Rule ``decide_members``: pool the comparison rows (one TSV per training case) into ``members.json``."""
    tables = [pd.read_csv(p, sep="\t") for p in comparisons]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    decision = decide_members(table, extra, min_dice_gain)
    atomic_write_text(Path(out), json.dumps(decision, indent=2) + "\n")
    return decision


def load_member_decision(path: Path) -> dict[str, Any]:
    try:
        decision = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a members decision ({error})") from error
    if not isinstance(decision, dict) or not isinstance(decision.get("keep"), bool):
        raise InputError(f"{path}: a members decision needs a boolean 'keep'")
    return decision
