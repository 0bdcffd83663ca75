"""Calibration, uncertainty-error overlap, score correlation and the review list: known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from carve.errors import InputError
from carve.evaluation.calibration import (
    THRESHOLDS,
    assess_case,
    assess_case_files,
    calibration_errors,
    failure_detection,
    reliability_counts,
    review_files,
    review_list,
    score_correlations,
    summarise_assessment,
    summarise_assessment_files,
    threshold_counts,
)
from carve.imaging.io import write_image

SHAPE = (4, 6, 5)


def test_reliability_counts_and_known_ece() -> None:
    # bin [0.9, 1]: 10 voxels at 0.95, 8 correct; bin [0.6, 0.7): 10 voxels at 0.65, 5 correct
    confidence = np.array([0.95] * 10 + [0.65] * 10, np.float32)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5, bool)
    bins = reliability_counts(confidence, correct)
    assert len(bins) == 10 and bins["voxels"].sum() == 20
    top = bins.iloc[9]
    assert top["voxels"] == 10 and top["correct"] == 8 and top["confidence_sum"] == pytest.approx(9.5)
    assert bins.iloc[6]["voxels"] == 10 and bins.iloc[6]["correct"] == 5
    errors = calibration_errors(bins)
    # gaps: |0.8 - 0.95| = 0.15 and |0.5 - 0.65| = 0.15, equal weights
    assert errors["ece"] == pytest.approx(0.15, abs=1e-6) and errors["mce"] == pytest.approx(0.15, abs=1e-6)
    assert errors["accuracy"] == pytest.approx(13 / 20)
    assert errors["mean_confidence"] == pytest.approx(0.8)
    perfect = reliability_counts(np.ones(7, np.float32), np.ones(7, bool))
    assert calibration_errors(perfect)["ece"] == 0.0
    assert np.isnan(calibration_errors(reliability_counts(np.zeros(0), np.zeros(0, bool)))["ece"])


def test_threshold_counts_count_at_or_above() -> None:
    uncertainty = np.array([0.0, 0.12, 0.5, 0.97, 1.0, 1.0], np.float32)
    error = np.array([False, True, True, False, True, False])
    table = threshold_counts(uncertainty, error).set_index("threshold")
    assert list(table.index) == list(THRESHOLDS) and len(THRESHOLDS) == 19
    assert table.loc[0.1, "uncertain_voxels"] == 5 and table.loc[0.1, "overlap_voxels"] == 3
    assert table.loc[0.5, "uncertain_voxels"] == 4 and table.loc[0.5, "overlap_voxels"] == 2
    assert table.loc[0.95, "uncertain_voxels"] == 3 and table.loc[0.95, "overlap_voxels"] == 1
    assert (table["error_voxels"] == 3).all()


def case_arrays(wrong_voxels: int = 6, seed: int = 0):
    """A case whose uncertainty marks exactly its errors: entropy 1 and confidence 0.5 on them."""
    rng = np.random.default_rng(seed)
    reference = np.zeros(SHAPE, np.uint8)
    reference[1:3, 1:5, 1:4] = 1
    prediction = reference.copy()
    wrong = np.zeros(SHAPE, bool)
    wrong.ravel()[rng.choice(reference.size, wrong_voxels, replace=False)] = True
    prediction[wrong] = np.where(reference[wrong] == 0, 1, 0)
    confidence = np.where(wrong, 0.5, 1.0).astype(np.float32)
    entropy = wrong.astype(np.float32)
    mi = np.where(wrong, np.log(2) * 0.5, 0.0).astype(np.float32)
    return reference, prediction, confidence, entropy, mi, wrong


def test_assess_case_perfect_uncertainty_outlines_the_errors() -> None:
    reference, prediction, confidence, entropy, mi, wrong = case_arrays()
    reliability, errors = assess_case(reference, prediction, confidence, entropy, mi, n_classes=2)
    assert set(reliability["region"]) == {"all", "foreground_region"}
    every = reliability[reliability["region"] == "all"]
    assert every["voxels"].sum() == reference.size and every["correct"].sum() == reference.size - wrong.sum()
    assert calibration_errors(every)["ece"] == pytest.approx(wrong.mean() * 0.5)  # bin 0.5: accuracy 0
    region = reliability[reliability["region"] == "foreground_region"]
    assert 0 < region["voxels"].sum() < reference.size
    entropy_dice = errors[errors["map"] == "normalised_entropy"].set_index("threshold")["dice"]
    assert (entropy_dice == 1.0).all()  # entropy is 1 exactly on the errors
    mi_dice = errors[errors["map"] == "mutual_information"].set_index("threshold")["dice"]
    assert mi_dice[0.5] == 1.0 and mi_dice[0.55] == 0.0  # MI / log 2 = 0.5 on the errors
    confidence_dice = errors[errors["map"] == "one_minus_confidence"].set_index("threshold")["dice"]
    assert confidence_dice[0.95] == 1.0  # (1 - 0.5) / (1 - 1/2) = 1
    with pytest.raises(ValueError, match="differ in shape"):
        assess_case(reference, prediction[:2], confidence, entropy, mi, n_classes=2)


def test_summary_pools_cases() -> None:
    reliability, errors = {}, {}
    for i, n in enumerate((4, 10)):
        reliability[f"c{i}"], errors[f"c{i}"] = assess_case(*case_arrays(n, seed=i)[:5], n_classes=2)
    calibration, bins, overlap = summarise_assessment(reliability, errors)
    row = calibration.set_index("region").loc["all"]
    total = 2 * np.prod(SHAPE)
    assert row["voxels"] == total and row["cases"] == 2
    assert row["ece"] == pytest.approx(14 / total * 0.5)
    assert row["ece_case_mean"] == pytest.approx((4 + 10) / 2 / np.prod(SHAPE) * 0.5)
    assert bins.groupby("region")["voxels"].sum()["all"] == total
    entropy = overlap[overlap["map"] == "normalised_entropy"]
    assert (entropy["dice_pooled"] == 1.0).all() and (entropy["dice_case_mean"] == 1.0).all()
    best = overlap[overlap["best"]]
    assert len(best) == 3 and best.set_index("map").loc["normalised_entropy", "threshold"] == 0.05
    with pytest.raises(ValueError, match="at least one"):
        summarise_assessment({}, {})


def test_score_correlations_are_scipys() -> None:
    scores = pd.DataFrame(
        {
            "case": list("abcde"),
            "mean_normalised_entropy": [0.1, 0.3, 0.2, 0.5, 0.0],
            "mean_std_foreground": [0.2, 0.2, 0.2, 0.2, 0.0],
            "foreground_voxels": [10, 20, 30, 40, 0],
        }
    )
    dice = pd.Series([0.9, 0.6, 0.8, 0.3, 0.0], index=list("abcde"))
    table = score_correlations(scores, dice).set_index("score")
    expected = stats.spearmanr([0.1, 0.3, 0.2, 0.5], [0.9, 0.6, 0.8, 0.3]).statistic
    assert table.loc["mean_normalised_entropy", "spearman_rho"] == pytest.approx(expected)
    assert table.loc["mean_normalised_entropy", "cases"] == 4  # the empty prediction is left out
    assert np.isnan(table.loc["mean_std_foreground", "spearman_rho"])  # constant score


def failure_scores() -> tuple[pd.DataFrame, pd.Series]:
    """Cases a-d with risks 1 - Dice = 0, 1/4, 1/2, 1 (dyadic: exact sums) and an empty prediction e."""
    scores = pd.DataFrame(
        {
            "case": list("abcde"),
            "members": [4, 4, 4, 4, 4],
            "mean_normalised_entropy": [0.1, 0.2, 0.3, 0.9, 0.0],  # perfect
            "predicted_dice_foreground": [0.9, 0.8, 0.7, 0.1, 1.0],  # perfect, higher is safer
            "mean_mutual_information": [0.9, 0.3, 0.2, 0.1, 0.0],  # reversed
            "uncertain_foreground_fraction": [0.5, 0.5, 0.5, 0.5, 0.0],  # constant on a-d
            "foreground_voxels": [10.0, 10.0, 10.0, 10.0, 0.0],
        }
    )
    return scores, pd.Series([1.0, 0.75, 0.5, 0.0, 0.0], index=list("abcde"))


def test_failure_detection_leaves_out_empty_predictions_and_draws_the_best_three() -> None:
    scores, dice = failure_scores()
    table, fig = failure_detection(scores, dice, dice_threshold=0.6)
    optimal, random, worst = 57 / 384, 7 / 16, 293 / 384  # AURCs of the ranking by risk, a constant, the reverse
    assert list(table["score"]) == [  # tied AURCs by name
        "mean_normalised_entropy",
        "predicted_dice_foreground",
        "uncertain_foreground_fraction",
        "mean_mutual_information",
    ]  # members is no score
    rows = table.set_index("score")
    assert (rows["cases"] == 4).all() and (rows["failures"] == 2).all()  # e (empty) left out: Dice 0.5 and 0.0
    assert (rows["aurc_random"] == random).all() and (rows["aurc_optimal"] == optimal).all()
    for name in ("mean_normalised_entropy", "predicted_dice_foreground"):
        assert rows.loc[name, "aurc"] == optimal and rows.loc[name, "gap_closed"] == 1.0
        assert rows.loc[name, "auroc"] == 1.0
    assert rows.loc["predicted_dice_foreground", "direction"] == "higher_is_safer"
    assert rows.loc["predicted_dice_foreground", "spearman_rho"] == pytest.approx(1.0)
    assert rows.loc["mean_normalised_entropy", "spearman_rho"] == pytest.approx(-1.0)
    assert rows.loc["uncertain_foreground_fraction", "aurc"] == random
    assert rows.loc["mean_mutual_information", "aurc"] == pytest.approx(worst)
    assert rows.loc["mean_mutual_information", "auroc"] == 0.0
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == [
        "mean_normalised_entropy (AURC 0.148)",
        "predicted_dice_foreground (AURC 0.148)",
        "uncertain_foreground_fraction (AURC 0.438)",
    ]
    assert labels[3].startswith("optimal") and labels[3].endswith("(AURC 0.148)")  # over a-d only
    assert labels[4] == "random (AURC 0.438)" and len(labels) == 5
    assert "4 cases" in ax.get_title()


def test_failure_detection_without_a_non_empty_prediction_and_bad_threshold() -> None:
    scores, dice = failure_scores()
    table, fig = failure_detection(scores.assign(foreground_voxels=0.0), dice, 0.7)
    assert len(table) == 4 and (table["cases"] == 0).all() and table["aurc"].isna().all()
    assert not fig.axes[0].get_lines()
    with pytest.raises(InputError, match=r"evaluate.failure_dice_threshold must be in \[0, 1\], got 1.2"):
        failure_detection(scores, dice, 1.2)
    with pytest.raises(InputError, match="no case has both"):
        failure_detection(scores, dice.rename(lambda case: f"x{case}"), 0.7)


def test_review_list_flags_high_scores_and_empty_predictions() -> None:
    scores = pd.DataFrame(
        {
            "case": ["cv1", "cv2", "cv3", "cv4", "t1", "t2", "t3"],
            "mean_normalised_entropy": [0.1, 0.2, 0.3, 0.4, 0.35, 0.05, 0.0],
            "foreground_voxels": [5, 5, 5, 5, 5, 5, 0],
        }
    )
    dice = pd.Series({"cv1": 0.9, "cv2": 0.8, "cv3": 0.7, "cv4": 0.5})
    table = review_list(scores, ["cv1", "cv2", "cv3", "cv4"], dice, "mean_normalised_entropy", 0.75)
    assert list(table["case"]) == ["t3", "cv4", "t1", "cv3", "cv2", "cv1", "t2"]
    assert list(table["rank"]) == list(range(1, 8))
    flagged = set(table.loc[table["review"], "case"])
    threshold = np.quantile([0.1, 0.2, 0.3, 0.4], 0.75)  # 0.325
    assert flagged == {"t3", "cv4", "t1"} and table["threshold"].iloc[0] == pytest.approx(threshold)
    row = table.set_index("case")
    assert row.loc["t3", "reason"] == "empty prediction"
    assert row.loc["t1", "set"] == "test" and row.loc["cv4", "set"] == "cv"
    assert row.loc["t1", "cv_percentile"] == pytest.approx(0.75)
    assert row.loc["cv4", "mean_foreground_dice"] == 0.5 and np.isnan(row.loc["t1", "mean_foreground_dice"])
    with pytest.raises(ValueError, match="no score"):
        review_list(scores, ["cv1"], dice, "nope", 0.75)


def test_review_list_reads_an_agreement_score_the_other_way_round() -> None:
    scores = pd.DataFrame(
        {
            "case": ["cv1", "cv2", "cv3", "cv4", "t1", "t2"],
            "predicted_dice_foreground": [0.9, 0.8, 0.7, 0.6, 0.65, np.nan],
            "foreground_voxels": [5, 5, 5, 5, 5, 5],
        }
    )
    dice = pd.Series({"cv1": 0.9, "cv2": 0.8, "cv3": 0.7, "cv4": 0.5})
    table = review_list(scores, ["cv1", "cv2", "cv3", "cv4"], dice, "predicted_dice_foreground", 0.75)
    assert list(table["case"]) == ["cv4", "t1", "cv3", "cv2", "cv1", "t2"]  # lowest predicted Dice first, NaN last
    threshold = -np.quantile([-0.9, -0.8, -0.7, -0.6], 0.75)  # 0.675 in the score's units
    assert table["threshold"].iloc[0] == pytest.approx(threshold)
    row = table.set_index("case")
    assert set(table.loc[table["review"], "case"]) == {"cv4", "t1"} and row.loc["t1", "reason"].endswith("<= threshold")
    assert not row.loc["t2", "review"] and np.isnan(row.loc["t2", "cv_percentile"])


def test_the_review_score_is_chosen_by_the_cross_validation() -> None:
    from carve.evaluation.calibration import choose_review_score

    failures = pd.DataFrame(
        {
            "score": [
                "pairwise_dice_foreground",
                "mean_normalised_entropy",
                "member_predicted_dice_foreground",
                "mean_member_entropy",
            ],
            "aurc": [0.10, 0.11, 0.12, 0.15],
            "aurc_random": [0.2] * 4,
            "aurc_optimal": [0.05] * 4,
            "auroc": [0.9, 0.85, 0.8, 0.7],
            "cases": [8, 10, 10, 10],
        }
    )
    scores = pd.DataFrame(
        {
            "case": ["a", "b"],
            "pairwise_dice_foreground": [np.nan, 0.9],  # one member on a cross-validation case: not every case has it
            "mean_normalised_entropy": [0.1, 0.2],  # the ensemble's: shifts with the number of members
            "member_predicted_dice_foreground": [0.8, 0.9],
            "mean_member_entropy": [0.1, 0.2],
        }
    )
    choice = choose_review_score(failures, scores, "auto")
    # the best of the scores whose meaning does not depend on the number of members, not the best overall
    assert choice["score"] == "member_predicted_dice_foreground" and choice["aurc"] == 0.12
    assert choice["candidates"] == ["mean_member_entropy", "member_predicted_dice_foreground"]
    assert choose_review_score(failures, scores, "mean_std_foreground")["score"] == "mean_std_foreground"
    none = failures.assign(aurc=np.nan)
    assert choose_review_score(none, scores, "auto")["score"] == "mean_member_entropy"
    lacking = scores.assign(member_predicted_dice_foreground=[np.nan, 0.9])
    assert choose_review_score(failures, lacking, "auto")["score"] == "mean_member_entropy"


def test_file_steps(tmp_path, oblique_geometry) -> None:
    cv_cases = ["c0", "c1", "c2"]
    reliability_paths, error_paths, score_paths, rows = [], [], [], []
    for i, case in enumerate(cv_cases):
        reference, prediction, confidence, entropy, mi, wrong = case_arrays(3 + 3 * i, seed=i)
        paths = {}
        for name, array in (("ref", reference), ("pred", prediction), ("entropy", entropy), ("mi", mi)):
            paths[name] = write_image(tmp_path / f"{case}_{name}.nii.gz", array, oblique_geometry)
        conf = np.rint(confidence * 255).astype(np.uint8)
        paths["conf"] = write_image(tmp_path / f"{case}_conf.nii.gz", conf, oblique_geometry)
        reliability_paths.append(tmp_path / f"{case}_reliability.tsv")
        error_paths.append(tmp_path / f"{case}_errors.tsv")
        assess_case_files(paths["pred"], paths["ref"], paths["conf"], paths["entropy"], paths["mi"], 2,
                          reliability_paths[-1], error_paths[-1])  # fmt: skip
        score_paths.append(tmp_path / f"{case}.tsv")
        entropy_score = 0.1 * (i + 1)  # one member per cross-validation case: the member entropy is the same
        score = {"case": case, "mean_normalised_entropy": entropy_score, "mean_member_entropy": entropy_score}
        score["foreground_voxels"] = 5.0
        pd.DataFrame([score]).to_csv(score_paths[-1], sep="\t", index=False)
        rows += [{"case": case, "set": "cv", "label": "a", "dice": 0.9 - 0.2 * i}]
    pd.DataFrame(rows).to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    outputs = {name: tmp_path / f"{name}.tsv" for name in ("calibration", "reliability", "error_overlap")}
    outputs |= {"score_correlation": tmp_path / "rho.tsv", "figure": tmp_path / "reliability.png"}
    outputs |= {"failure_detection": tmp_path / "failures.tsv", "risk_coverage": tmp_path / "risk_coverage.png"}
    calibration = summarise_assessment_files(
        reliability_paths, error_paths, score_paths, tmp_path / "cases.tsv", cv_cases, outputs, 0.6
    )
    stored_half = 128 / 255  # confidence 0.5 as stored in uint8
    assert calibration.set_index("region").loc["all", "ece"] == pytest.approx((3 + 6 + 9) / (3 * 120) * stored_half)
    assert outputs["figure"].read_bytes().startswith(b"\x89PNG")
    rho = pd.read_csv(outputs["score_correlation"], sep="\t").set_index("score")
    assert rho.loc["mean_normalised_entropy", "spearman_rho"] == pytest.approx(-1.0)
    failures = pd.read_csv(outputs["failure_detection"], sep="\t").set_index("score")
    assert sorted(failures.index) == ["mean_member_entropy", "mean_normalised_entropy"]  # rank 0.9, 0.7, 0.5 perfectly
    assert failures.loc["mean_normalised_entropy", "gap_closed"] == pytest.approx(1.0)
    assert failures.loc["mean_normalised_entropy", "failures"] == 1  # Dice 0.5 < 0.6
    assert outputs["risk_coverage"].read_bytes().startswith(b"\x89PNG")
    overlap = pd.read_csv(outputs["error_overlap"], sep="\t")
    assert overlap.loc[overlap["map"] == "normalised_entropy", "dice_pooled"].eq(1.0).all()
    review = review_files(score_paths, tmp_path / "cases.tsv", cv_cases, "auto", 0.5, tmp_path / "review.tsv",
                          outputs["failure_detection"], tmp_path / "review_score.json")  # fmt: skip
    assert json.loads((tmp_path / "review_score.json").read_text())["score"] == "mean_member_entropy"
    assert list(review["case"]) == ["c2", "c1", "c0"] and list(review["review"]) == [True, True, False]
    with pytest.raises(InputError, match="auto needs the failure-detection table"):
        review_files(score_paths, tmp_path / "cases.tsv", cv_cases, "auto", 0.5, tmp_path / "r.tsv")
    assert pd.read_csv(tmp_path / "review.tsv", sep="\t")["case"].tolist() == ["c2", "c1", "c0"]


def test_maps_figure_of_a_run_folder(tmp_path, oblique_geometry) -> None:
    from carve.evaluation.calibration import write_maps_figure

    reference, prediction, confidence, entropy, mi, _ = case_arrays()
    write_image(tmp_path / "nifti" / "c" / "image.nii.gz", reference.astype(np.float32), oblique_geometry)
    write_image(tmp_path / "cv" / "c.nii.gz", prediction, oblique_geometry)
    write_image(tmp_path / "uncertainty" / "c.nii.gz", entropy, oblique_geometry)
    write_image(tmp_path / "uncertainty" / "c" / "mutual_information.nii.gz", mi, oblique_geometry)
    conf = np.rint(confidence * 255).astype(np.uint8)
    write_image(tmp_path / "uncertainty" / "c" / "confidence.nii.gz", conf, oblique_geometry)
    out = write_maps_figure(tmp_path, "c", tmp_path / "maps.png")
    from matplotlib.image import imread

    picture = imread(out)
    assert picture.shape[1] > 4 * picture.shape[0]  # five panels side by side


def test_failure_detection_of_the_labelled_test_cases(tmp_path) -> None:
    from carve.evaluation.calibration import review_files

    rows, score_paths = [], []
    cases = {"cv0": ("cv", 0.9, 0.1), "cv1": ("cv", 0.5, 0.3), "t0": ("test", 0.95, 0.05), "t1": ("test", 0.6, 0.2)}
    cases |= {"t2": ("test", 0.8, 0.1), "u0": ("test", None, 0.9)}  # u0: unlabelled, no Dice: not measured
    for case, (set_name, dice, risk) in cases.items():
        score_paths.append(tmp_path / f"{case}.tsv")
        score = {"case": case, "mean_member_entropy": risk, "foreground_voxels": 5.0}
        pd.DataFrame([score]).to_csv(score_paths[-1], sep="\t", index=False)
        if dice is not None:
            rows.append({"case": case, "set": set_name, "label": "a", "dice": dice})
    pd.DataFrame(rows).to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    out = tmp_path / "test_failures.tsv"
    review_files(score_paths, tmp_path / "cases.tsv", ["cv0", "cv1"], "mean_member_entropy", 0.75,
                 tmp_path / "review.tsv", test_failures_out=out, dice_threshold=0.7)  # fmt: skip
    table = pd.read_csv(out, sep="\t").set_index("score")
    assert table.loc["mean_member_entropy", "cases"] == 3  # t0, t1, t2: the cv cases and the unlabelled one left out
    assert table.loc["mean_member_entropy", "failures"] == 1  # t1: Dice 0.6 < 0.7
    assert table.loc["mean_member_entropy", "auroc"] == 1.0  # the failed case has the highest risk
    assert table.loc["mean_member_entropy", "gap_closed"] == pytest.approx(1.0)
