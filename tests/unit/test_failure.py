"""Case-level failure detection: agreement scores, risk-coverage curves, AURC, AUROC and the table: known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carve.errors import InputError
from carve.evaluation.failure import (
    aurc,
    aurc_optimal,
    aurc_random,
    best_score,
    failure_auroc,
    failure_detection_table,
    gap_closed,
    member_mean_predicted_dice,
    pairwise_member_dice,
    predicted_dice,
    risk_coverage_curve,
    risk_coverage_curves,
    risk_coverage_figure,
    risk_score,
    score_direction,
)

# Four cases with risks 1 - Dice = 0, 1/4, 1/2, 1 (dyadic: every sum below is exact in floating point).
DICE = np.array([1.0, 0.75, 0.5, 0.0])
# Ranked least risky first, the selective risks with 1..4 cases kept are 0, 1/8, 1/4, 7/16 (trapezoids of width 1/4
# from the coverage-0 point (0, 0)): AURC = (0 + 1/64 + 3/64 + 11/128) = 57/384.
OPTIMAL = 57 / 384
# Ranked most risky first, they are 1, 3/4, 7/12, 7/16 from (0, 1): AURC = 1/4 + 7/32 + 1/6 + 49/384 = 293/384.
WORST = 293 / 384
RANDOM = 7 / 16  # = 168/384, the mean risk


def test_pairwise_member_dice_three_members() -> None:
    a = np.zeros((2, 2, 4), np.uint8)
    a[0] = 1  # label 1: 8 voxels
    a[1, 1, 3] = 2  # label 2: one voxel, in member a only
    b = a.copy()
    b[1, 1, 3] = 0
    c = np.zeros_like(a)
    c[0, 0] = 1  # label 1: 4 of a's 8 voxels
    scores = pairwise_member_dice([a, b, c], [1, 2, 3], label_names={1: "liver"})
    # label 1: (a, b) 8 of 8 -> 1 (a's label 2 voxel is not label 1); (a, c) and (b, c): 2*4 / (8 + 4) = 2/3
    assert scores["pairwise_dice_liver"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # label 2: (a, b) 2*0 / (1 + 0) = 0, (a, c) = 0, (b, c) both lack it: 1
    assert scores["pairwise_dice_label_2"] == pytest.approx(1 / 3)
    assert scores["pairwise_dice_label_3"] == 1.0  # no member has it: every pair agrees
    assert scores["pairwise_dice_foreground"] == pytest.approx((7 / 9 + 1 / 3 + 1) / 3)
    assert list(scores) == [
        "pairwise_dice_liver",
        "pairwise_dice_label_2",
        "pairwise_dice_label_3",
        "pairwise_dice_foreground",
    ]
    assert pairwise_member_dice([a, a], [1, 2])["pairwise_dice_foreground"] == 1.0


def test_pairwise_member_dice_rejects_bad_input() -> None:
    member = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="at least two members"):
        pairwise_member_dice([member], [1])
    with pytest.raises(ValueError, match="differ in shape"):
        pairwise_member_dice([member, np.zeros((2, 2, 3), np.uint8)], [1])
    with pytest.raises(ValueError, match="not 'foreground'"):
        pairwise_member_dice([member, member], [1], label_names={1: "foreground"})
    with pytest.raises(ValueError, match="at least one label"):
        pairwise_member_dice([member, member], [])


def test_predicted_dice_of_a_one_hot_map_is_one() -> None:
    labels = np.array([[[0, 1], [2, 1]]])  # (1, 2, 2); label 3 is never predicted and has no probability
    one_hot = np.stack([labels == c for c in range(4)]).astype(np.float16)
    scores = predicted_dice(one_hot, label_names={2: "kidney"})
    assert scores == {
        "predicted_dice_label_1": 1.0,
        "predicted_dice_kidney": 1.0,
        "predicted_dice_label_3": 1.0,
        "predicted_dice_foreground": 1.0,
    }


def test_member_predicted_dice_is_the_mean_of_each_members_own() -> None:
    confident = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32).reshape(2, 1, 1, 2)  # predicted Dice 1
    unsure = np.array([[0.25, 0.75], [0.75, 0.25]], np.float32).reshape(2, 1, 1, 2)  # 0.75 (hand example below)
    members = [predicted_dice(p, {1: "liver"}) for p in (confident, unsure)]
    scores = member_mean_predicted_dice(members)
    assert scores == {"member_predicted_dice_liver": 0.875, "member_predicted_dice_foreground": 0.875}
    one = member_mean_predicted_dice(members[1:])
    assert one["member_predicted_dice_foreground"] == members[1]["predicted_dice_foreground"]  # one member: the same
    assert member_mean_predicted_dice([]) == {}
    assert score_direction("member_predicted_dice_foreground") == "higher_is_safer"
    with pytest.raises(ValueError, match="same keys"):
        member_mean_predicted_dice([members[0], predicted_dice(unsure)])


def test_predicted_dice_hand_examples() -> None:
    # two voxels, float16 (exact): (0.25, 0.75) -> argmax 1, (0.75, 0.25) -> argmax 0
    # label 1: 2 * 0.75 / (1.0 + 1) = 0.75
    p = np.array([[0.25, 0.75], [0.75, 0.25]], np.float16).reshape(2, 1, 1, 2)
    assert predicted_dice(p)["predicted_dice_label_1"] == 0.75
    # three classes: voxel A (0.1, 0.6, 0.3) -> 1, voxel B (0.2, 0.3, 0.5) -> 2
    # label 1: 2 * 0.6 / (0.9 + 1) = 12/19; label 2: 2 * 0.5 / (0.8 + 1) = 5/9
    p = np.array([[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]], np.float32).reshape(3, 1, 1, 2)
    scores = predicted_dice(p)
    assert scores["predicted_dice_label_1"] == pytest.approx(12 / 19, rel=1e-6)
    assert scores["predicted_dice_label_2"] == pytest.approx(5 / 9, rel=1e-6)
    assert scores["predicted_dice_foreground"] == pytest.approx((12 / 19 + 5 / 9) / 2, rel=1e-6)
    # probability but never the argmax: 0; a tie goes to the first class (background), as numpy.argmax
    assert predicted_dice(np.array([0.6, 0.4], np.float32).reshape(2, 1, 1, 1))["predicted_dice_label_1"] == 0.0
    assert predicted_dice(np.array([0.5, 0.5], np.float32).reshape(2, 1, 1, 1))["predicted_dice_label_1"] == 0.0
    with pytest.raises(ValueError, match="n_classes >= 2"):
        predicted_dice(np.ones((1, 2, 2, 2), np.float32))


def test_direction_of_scores() -> None:
    assert score_direction("mean_normalised_entropy") == "higher_is_riskier"
    assert score_direction("mean_std_liver") == "higher_is_riskier"
    assert score_direction("pairwise_dice_foreground") == "higher_is_safer"
    assert score_direction("predicted_dice_label_2") == "higher_is_safer"
    assert list(risk_score("predicted_dice_foreground", [0.9, 0.2])) == [-0.9, -0.2]
    assert list(risk_score("mean_mutual_information", [0.9, 0.2])) == [0.9, 0.2]


def test_risk_coverage_curve_of_a_perfect_ranking() -> None:
    order = [2, 0, 3, 1]  # the input order does not matter
    scores = np.array([0.1, 0.2, 0.3, 0.9])
    curve = risk_coverage_curve(scores[order], DICE[order])
    assert list(curve.columns) == ["coverage", "cases", "selective_risk", "threshold"]
    assert list(curve["coverage"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(curve["cases"]) == [0, 1, 2, 3, 4]
    assert list(curve["selective_risk"]) == [0.0, 0.0, 0.125, 0.25, 0.4375]
    assert np.isnan(curve["threshold"].iloc[0]) and list(curve["threshold"].iloc[1:]) == [0.1, 0.2, 0.3, 0.9]
    assert aurc(scores, DICE) == OPTIMAL
    assert aurc_optimal(DICE) == OPTIMAL
    assert aurc_random(DICE) == RANDOM
    assert gap_closed(scores, DICE) == 1.0


def test_reversed_ranking_is_worst_and_constant_score_is_random() -> None:
    reversed_scores = np.array([0.9, 0.3, 0.2, 0.1])
    assert aurc(reversed_scores, DICE) == pytest.approx(WORST, abs=1e-12)
    assert gap_closed(reversed_scores, DICE) == pytest.approx((168 - 293) / (168 - 57))
    constant = np.full(4, 0.5)
    curve = risk_coverage_curve(constant, DICE)  # one tie group: kept or dropped together
    assert list(curve["coverage"]) == [0.0, 1.0] and list(curve["selective_risk"]) == [RANDOM, RANDOM]
    assert aurc(constant, DICE) == RANDOM
    assert gap_closed(constant, DICE) == 0.0


def test_ties_are_kept_or_dropped_together() -> None:
    # risks 0 and 1/2 tied at score 0, risks 1/4 and 1 tied at score 1: points (0, 1/4), (1/2, 1/4), (1, 7/16)
    scores = np.array([0.0, 0.0, 1.0, 1.0])
    dice = np.array([1.0, 0.5, 0.75, 0.0])
    curve = risk_coverage_curve(scores, dice)
    assert list(curve["cases"]) == [0, 2, 4]
    assert list(curve["selective_risk"]) == [0.25, 0.25, 0.4375]
    expected = 0.5 * 0.25 + 0.5 * (0.25 + 0.4375) / 2  # 0.296875
    assert aurc(scores, dice) == expected
    assert aurc(scores[::-1], dice[::-1]) == expected  # nor does the order of tied cases
    # two cases, one failed, tied: the older fd-shifts curve (a point after the first case of the group) gives
    # 1/8 or 3/8 depending on which of the two comes first
    assert aurc([3.0, 3.0], [1.0, 0.0]) == 0.5


def test_plateau_of_equal_risks_can_score_below_the_optimum() -> None:
    dice = np.array([1.0, 0.0, 0.0])  # risks 0, 1, 1
    # one at a time: (0, 0), (1/3, 0), (2/3, 1/2), (1, 2/3): 1/3 * 1/4 + 1/3 * 7/12 = 5/18
    assert aurc_optimal(dice) == pytest.approx(5 / 18)
    assert aurc([0.0, 1.0, 2.0], dice) == pytest.approx(5 / 18)
    # the two failures tied: (0, 0), (1/3, 0), (1, 2/3): 2/3 * 1/3 = 2/9, the chord below the curve
    assert aurc(1.0 - dice, dice) == pytest.approx(2 / 9)
    assert gap_closed(1.0 - dice, dice) == pytest.approx((2 / 3 - 2 / 9) / (2 / 3 - 5 / 18))  # 8/7
    assert np.isnan(gap_closed([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))  # every Dice equal: no gap to close


def test_risk_coverage_input_checks() -> None:
    with pytest.raises(ValueError, match="3 risk scores but 2"):
        aurc([0.1, 0.2, 0.3], [0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        aurc([0.1, np.nan], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aurc([0.1, 0.2], [0.5, 1.2])
    with pytest.raises(ValueError, match="no cases"):
        aurc_random([])


def test_failure_auroc_known_values() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.9])  # failures (Dice < 0.6): the cases of Dice 0.5 and 0
    assert failure_auroc(scores, DICE, 0.6) == 1.0
    assert failure_auroc(scores[::-1], DICE, 0.6) == 0.0
    assert failure_auroc(np.full(4, 0.5), DICE, 0.6) == 0.5
    # failure scored 0.5 against successes 0.5 (tie: 1/2) and 0.1 (1): 1.5 / 2
    assert failure_auroc([0.5, 0.5, 0.1], [0.0, 1.0, 1.0], 0.5) == 0.75
    assert np.isnan(failure_auroc(scores, DICE, 0.0))  # no case below 0
    assert np.isnan(failure_auroc(scores, [0.1, 0.2, 0.3, 0.4], 0.5))  # every case failed
    with pytest.raises(ValueError, match="threshold"):
        failure_auroc(scores, DICE, 1.5)


def score_table() -> tuple[pd.DataFrame, pd.Series]:
    dice = pd.Series({"a": 1.0, "b": 0.75, "c": 0.5, "d": 0.0, "f": 0.9}, name="mean_foreground_dice")
    scores = pd.DataFrame(
        {
            "case": ["a", "b", "c", "d", "e"],  # e has no Dice, f no scores: both left out
            "set": ["cv"] * 5,
            "mean_normalised_entropy": [0.1, 0.2, 0.3, 0.9, 0.0],  # perfect
            "pairwise_dice_foreground": [0.99, 0.9, 0.8, 0.2, 1.0],  # perfect, higher is safer
            "mean_mutual_information": [0.9, 0.3, 0.2, 0.1, 0.0],  # reversed
            "uncertain_foreground_fraction": [0.5, 0.5, 0.5, 0.5, 0.5],  # constant
            "mean_std_foreground": [np.nan, 0.2, 0.3, 0.9, 0.0],  # perfect on b, c, d
            "foreground_voxels": [10.0, 10.0, 10.0, 10.0, 10.0],
        }
    )
    return scores, dice


def test_failure_detection_table_directions_and_order() -> None:
    scores, dice = score_table()
    table = failure_detection_table(scores, dice, dice_threshold=0.6)
    assert list(table["score"]) == [
        "mean_normalised_entropy",  # AURC 57/384, tied with the agreement score: by name
        "pairwise_dice_foreground",
        "mean_std_foreground",
        "uncertain_foreground_fraction",
        "mean_mutual_information",
    ]
    rows = table.set_index("score")
    assert rows.loc["pairwise_dice_foreground", "direction"] == "higher_is_safer"
    assert rows.loc["mean_normalised_entropy", "direction"] == "higher_is_riskier"
    for name in ("mean_normalised_entropy", "pairwise_dice_foreground"):
        assert rows.loc[name, "cases"] == 4 and rows.loc[name, "failures"] == 2
        assert rows.loc[name, "aurc"] == OPTIMAL and rows.loc[name, "aurc_optimal"] == OPTIMAL
        assert rows.loc[name, "aurc_random"] == RANDOM
        assert rows.loc[name, "gap_closed"] == 1.0 and rows.loc[name, "auroc"] == 1.0
    # Spearman of the raw score against Dice: a good uncertainty score is negative, a good agreement score positive
    assert rows.loc["mean_normalised_entropy", "spearman_rho"] == pytest.approx(-1.0)
    assert rows.loc["pairwise_dice_foreground", "spearman_rho"] == pytest.approx(1.0)
    worst = rows.loc["mean_mutual_information"]
    assert worst["aurc"] == pytest.approx(WORST) and worst["auroc"] == 0.0
    assert worst["gap_closed"] == pytest.approx(-125 / 111) and worst["spearman_rho"] == pytest.approx(1.0)
    constant = rows.loc["uncertain_foreground_fraction"]
    assert constant["aurc"] == RANDOM and constant["gap_closed"] == 0.0 and constant["auroc"] == 0.5
    assert np.isnan(constant["spearman_rho"])
    partial = rows.loc["mean_std_foreground"]  # case a has no value: 3 cases, risks 1/4, 1/2, 1
    assert partial["cases"] == 3 and partial["aurc_random"] == pytest.approx(1.75 / 3)
    assert partial["gap_closed"] == pytest.approx(1.0)
    assert "foreground_voxels" not in set(table["score"]) and "set" not in set(table["score"])
    with_members = failure_detection_table(scores.assign(members=4), dice, dice_threshold=0.6)
    assert "members" not in set(with_members["score"]) and len(with_members) == len(table)
    assert best_score(table) == "mean_normalised_entropy"


def test_best_score_breaks_ties_by_auroc_then_name() -> None:
    table = pd.DataFrame(
        {
            "score": ["a", "b", "c", "d", "e"],
            "aurc": [0.1, 0.1, 0.2, np.nan, 0.1],
            "auroc": [0.8, 0.9, 1.0, 1.0, 0.9],
        }
    )
    assert best_score(table) == "b"
    with pytest.raises(InputError, match="no score has an AURC"):
        best_score(table.assign(aurc=np.nan))


def test_failure_detection_table_input_errors() -> None:
    scores, dice = score_table()
    with pytest.raises(InputError, match=r"threshold must be in \[0, 1\], got 1.5"):
        failure_detection_table(scores, dice, 1.5)
    with pytest.raises(InputError, match="no case has both uncertainty scores and a Dice score"):
        failure_detection_table(scores, dice.rename(lambda case: f"other_{case}"), 0.5)
    with pytest.raises(InputError, match="no 'case' column"):
        failure_detection_table(scores.drop(columns="case"), dice, 0.5)
    with pytest.raises(InputError, match="repeat the case"):
        failure_detection_table(pd.concat([scores, scores.iloc[:1]]), dice, 0.5)
    with pytest.raises(InputError, match="Dice scores must lie in"):
        failure_detection_table(scores, dice * 2, 0.5)


def test_curves_and_figure() -> None:
    scores, dice = score_table()
    curves = risk_coverage_curves(scores, dice, ["pairwise_dice_foreground", "mean_mutual_information"])
    agreement = curves["pairwise_dice_foreground"]
    assert list(agreement["selective_risk"]) == [0.0, 0.0, 0.125, 0.25, 0.4375]
    assert list(agreement["threshold"].iloc[1:]) == [-0.99, -0.9, -0.8, -0.2]  # negated: the risk score
    with pytest.raises(InputError, match="no score"):
        risk_coverage_curves(scores, dice, ["mean_entropy"])
    fig = risk_coverage_figure(curves, DICE, title="cv")
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[0] == "pairwise_dice_foreground (AURC 0.148)"
    assert labels[1] == "mean_mutual_information (AURC 0.763)"
    assert labels[2].startswith("optimal") and labels[2].endswith("(AURC 0.148)")
    assert labels[3] == "random (AURC 0.438)"
    assert list(ax.get_lines()[3].get_ydata()) == [RANDOM, RANDOM]
    assert "coverage" in ax.get_xlabel() and "1 - Dice" in ax.get_ylabel()
    assert ax.get_title() == "cv"


def test_member_agreement_is_undefined_for_one_member() -> None:
    from carve.evaluation.failure import member_agreement

    one = np.zeros((2, 3, 3), np.uint8)
    one[0, :2, :2] = 1
    single = member_agreement([one], {1: "organ", 2: "lobe"})
    assert list(single) == ["pairwise_dice_organ", "pairwise_dice_lobe", "pairwise_dice_foreground"]
    assert all(np.isnan(v) for v in single.values())
    other = one.copy()
    other[0, 0, 0] = 0  # 3 of 4 voxels: Dice 2 * 3 / (4 + 3)
    pair = member_agreement([one, other], {1: "organ", 2: "lobe"})
    assert pair["pairwise_dice_organ"] == pytest.approx(6 / 7) and pair["pairwise_dice_lobe"] == 1.0
    assert pair["pairwise_dice_foreground"] == pytest.approx((6 / 7 + 1) / 2)
