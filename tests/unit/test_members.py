"""carve.prediction.members: mirrorings and projections kept as members only where cross-validation shows they pay."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from carve.errors import InputError
from carve.prediction.members import (
    NONE_CONFIGURED,
    comparison_row,
    decide_members,
    decide_members_files,
    has_extra,
    load_member_decision,
    mean_foreground_dice,
    options_after,
    plain,
)
from carve.prediction.predict import PredictOptions

EXTRA = {"mirror_axes": [2], "projections": 1}


def table(plain_dice, extra_dice, plain_risk, extra_risk) -> pd.DataFrame:
    """Comparison rows: each variant's Dice and an entropy-like score (higher = riskier) per case."""
    rows = []
    for i, values in enumerate(zip(plain_dice, extra_dice, plain_risk, extra_risk, strict=True)):
        row = {"case": f"c{i}", "plain_members": 1, "extra_members": 4}
        row |= {"plain_dice": values[0], "extra_dice": values[1]}
        row |= {"plain_mean_member_entropy": values[2], "extra_mean_member_entropy": values[3]}
        row |= {"plain_member_predicted_dice_foreground": np.nan, "extra_member_predicted_dice_foreground": np.nan}
        rows.append(row)
    return pd.DataFrame(rows)


DICE = [0.9, 0.8, 0.6, 0.4]
PERFECT = [0.1, 0.2, 0.3, 0.4]  # ranks the cases by Dice exactly: gap closed 1
WRONG = [0.4, 0.3, 0.2, 0.1]  # the reverse


def test_extra_members_are_dropped_when_they_lower_the_dice() -> None:
    decision = decide_members(table(DICE, [d - 0.02 for d in DICE], PERFECT, PERFECT), EXTRA)
    assert decision["keep"] is False and decision["reason"] == "they lower the mean cross-validation Dice"
    assert decision["mean_dice"] == {"plain": 0.675, "extra": 0.655}
    assert decision["best_gap_closed"] == {"plain": 1.0, "extra": 1.0}
    assert decision["best_score"]["plain"] == "mean_member_entropy"  # the other candidate is undefined (NaN)
    assert decision["members"] == {"plain": [1], "extra": [4]} and decision["cases"] == 4


def test_extra_members_are_kept_when_they_raise_the_dice_or_the_detection_without_lowering_the_other() -> None:
    better_dice = decide_members(table(DICE, [d + 0.01 for d in DICE], PERFECT, PERFECT), EXTRA)
    assert better_dice["keep"] is True and better_dice["reason"] == "they raise the mean Dice"
    better_detection = decide_members(table(DICE, DICE, WRONG, PERFECT), EXTRA)
    assert better_detection["keep"] is True and better_detection["reason"] == "they improve the failure detection"
    trade = decide_members(table(DICE, [d + 0.01 for d in DICE], PERFECT, WRONG), EXTRA)  # Dice up, detection down
    assert trade["keep"] is False and trade["reason"].startswith("they lower the failure detection")
    same = decide_members(table(DICE, DICE, PERFECT, PERFECT), EXTRA)
    assert same["keep"] is False and same["reason"] == "they improve neither the mean Dice nor the failure detection"
    assert decide_members(table(DICE, [d + 0.01 for d in DICE], PERFECT, PERFECT), EXTRA, 0.02)["keep"] is False


def test_nothing_to_decide_without_extra_members() -> None:
    none = {"mirror_axes": [], "projections": 0}
    assert not has_extra(none) and has_extra({"mirror_axes": [], "projections": 2})
    decision = decide_members(pd.DataFrame(), none)
    assert decision == {"extra_members": none, "keep": False, "cases": 0, "reason": NONE_CONFIGURED}
    with pytest.raises(InputError, match="no cross-validation case was compared"):
        decide_members(pd.DataFrame(), EXTRA)


def test_options_follow_the_decision() -> None:
    options = PredictOptions(overlap=0.25, projections=2, mirror_axes=None, precision="fp32")
    assert options_after(options, {"keep": True}) == options
    dropped = options_after(options, {"keep": False})
    assert dropped == plain(options) and (dropped.projections, dropped.mirror_axes, dropped.overlap) == (0, (), 0.25)


def test_comparison_row_scores_both_variants_against_the_reference() -> None:
    reference = np.zeros((2, 3, 4), np.uint8)
    reference[0, :2, :2] = 1  # 4 voxels of label 1
    reference[1, 0, :] = 2  # 4 voxels of label 2
    plain_labels = reference.copy()
    plain_labels[1] = 0  # label 2 missed: Dice 0
    scores = {
        "plain": {"members": 1, "mean_member_entropy": 0.3, "member_predicted_dice_foreground": 0.7},
        "extra": {"members": 4, "mean_member_entropy": 0.1, "member_predicted_dice_foreground": 0.9},
    }
    row = comparison_row("c", reference, {"plain": plain_labels, "extra": reference}, scores, [1, 2])
    assert row["plain_dice"] == 0.5 and row["extra_dice"] == 1.0
    assert (row["plain_members"], row["extra_members"]) == (1, 4)
    assert row["extra_mean_member_entropy"] == 0.1 and row["plain_member_predicted_dice_foreground"] == 0.7
    assert mean_foreground_dice(reference, reference, [1, 2, 3]) == 1.0  # a label absent from both agrees


def test_decision_file(tmp_path) -> None:
    rows = table(DICE, [d - 0.02 for d in DICE], PERFECT, PERFECT)
    paths = []
    for i, row in rows.iterrows():
        paths.append(tmp_path / f"c{i}.tsv")
        pd.DataFrame([row]).to_csv(paths[-1], sep="\t", index=False)
    out = tmp_path / "members.json"
    decide_members_files(paths, EXTRA, out)
    decision = load_member_decision(out)
    assert decision["keep"] is False and decision["cases"] == 4
    assert json.loads(out.read_text()) == decision
    out.write_text('{"keep": "no"}')
    with pytest.raises(InputError, match="boolean 'keep'"):
        load_member_decision(out)
    out.write_text("{")
    with pytest.raises(InputError, match="not a members decision"):
        load_member_decision(out)
