"""End-to-end: uncertainty maps, postprocessing decision and uncertainty assessment of the tiny run.

Reads the shared run of the tiny configuration (tests/conftest.py: ``tiny_run``); runs nothing itself.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from carve.evaluation.failure import score_direction
from carve.imaging.io import read_image
from carve.prediction.members import mean_foreground_dice
from carve.prediction.postprocess import apply_postprocessing, dice, load_postprocessing

pytestmark = pytest.mark.e2e
LABELS = {1: "organ", 2: "lobe"}
TRAIN = [f"demo_{k:03d}" for k in range(4)]
TEST = ["demo_004", "demo_005"]


@pytest.fixture(scope="module")
def results(tiny_run):
    return tiny_run / "results" / "e2e"


def test_every_case_has_its_maps_on_its_own_grid(results):
    decision = json.loads((results / "members.json").read_text())
    for case in TRAIN + TEST:
        image, geometry = read_image(results / "nifti" / case / "image.nii.gz")
        folder = results / "uncertainty" / case
        names = ["mutual_information", "confidence", "std_organ", "std_lobe"]
        maps = {name: read_image(folder / f"{name}.nii.gz") for name in names}
        maps["entropy"] = read_image(results / "uncertainty" / f"{case}.nii.gz")
        for name, (array, g) in maps.items():
            assert array.shape == image.shape and g.is_close(geometry, 1e-4, image.shape), (case, name)
        confidence = maps["confidence"][0]
        assert confidence.dtype == np.uint8 and confidence.min() >= 255 // 3
        assert 0 <= maps["mutual_information"][0].min() and maps["mutual_information"][0].max() <= np.log(3) + 1e-4
        assert all(0 <= maps[f"std_{n}"][0].min() and maps[f"std_{n}"][0].max() <= 0.5 for n in LABELS.values())
        scores = pd.read_csv(results / "uncertainty" / f"{case}.tsv", sep="\t").iloc[0]
        # members: folds x mirrorings (x axis: 2) x views (the image and one projection), where members.json kept
        # the mirrorings and the projection; else the folds alone
        per_fold = 2 * 2 if decision["keep"] else 1
        assert scores["members"] == (2 if case in TEST else 1) * per_fold
        assert {"mean_std_organ", "mean_std_lobe", "mean_mutual_information"} <= set(scores.index)
        predicted = [scores[f"predicted_dice_{name}"] for name in LABELS.values()]  # higher = safer
        assert all(0 <= d <= 1 for d in predicted)
        assert scores["predicted_dice_foreground"] == pytest.approx(np.mean(predicted))
        agreement = [scores[f"pairwise_dice_{name}"] for name in LABELS.values()]  # between the members' maps
        if scores["members"] > 1:
            assert all(0 <= a <= 1 for a in agreement)
            assert scores["pairwise_dice_foreground"] == pytest.approx(np.mean(agreement))
        else:  # one member: agreement is undefined, not perfect
            assert np.isnan(agreement).all() and np.isnan(scores["pairwise_dice_foreground"])
        own = [scores[f"member_predicted_dice_{name}"] for name in LABELS.values()]  # mean of each member's own
        assert all(0 <= d <= 1 for d in own) and scores["member_predicted_dice_foreground"] == pytest.approx(
            np.mean(own)
        )
        assert 0 <= scores["mean_member_entropy"] <= scores["mean_normalised_entropy"] + 1e-6


def test_mirroring_and_projections_are_kept_only_where_the_cross_validation_says_so(results):
    decision = json.loads((results / "members.json").read_text())
    assert decision["extra_members"] == {"mirror_axes": [2], "projections": 1} and decision["cases"] == len(TRAIN)
    rows = pd.concat([pd.read_csv(results / "members" / f"{case}.tsv", sep="\t") for case in TRAIN])
    assert set(rows["plain_members"]) == {1} and set(rows["extra_members"]) == {4}  # one fold, x2 flips, x2 views
    assert decision["mean_dice"]["plain"] == pytest.approx(rows["plain_dice"].mean(), abs=1e-6)
    assert decision["mean_dice"]["extra"] == pytest.approx(rows["extra_dice"].mean(), abs=1e-6)
    gain = rows["extra_dice"].mean() - rows["plain_dice"].mean()
    if decision["keep"]:  # kept only where it raised one of Dice and detection without lowering the other
        assert gain >= 0
    else:
        assert decision["reason"].startswith("they ")
    for case in TRAIN:  # the cross-validation prediction used what the decision kept: its Dice is the compared one
        raw = read_image(results / "cv_raw" / f"{case}.nii.gz")[0]
        reference = read_image(results / "nifti" / case / "label.nii.gz")[0]
        compared = rows.set_index("case").loc[case, "extra_dice" if decision["keep"] else "plain_dice"]
        assert mean_foreground_dice(reference, raw, sorted(LABELS)) == pytest.approx(compared, abs=1e-9)
    bundle = json.loads((results / "bundle" / "bundle.json").read_text())
    assert json.loads((results / "bundle" / bundle["members"]).read_text()) == decision


def test_postprocessing_is_decided_on_raw_cv_and_applied_to_every_prediction(results):
    document = json.loads((results / "postprocessing.json").read_text())
    assert document["cases"] == TRAIN
    plan = load_postprocessing(results / "postprocessing.json")
    assert set(plan) == set(LABELS)
    dice_raw = {v: [] for v in LABELS}
    for case in TRAIN:
        raw = read_image(results / "cv_raw" / f"{case}.nii.gz")[0]
        final = read_image(results / "cv" / f"{case}.nii.gz")[0]
        np.testing.assert_array_equal(final, apply_postprocessing(raw, plan))
        reference = read_image(results / "nifti" / case / "label.nii.gz")[0]
        for v in LABELS:
            dice_raw[v].append(dice(reference == v, raw == v))
    for v, entry in document["labels"].items():
        assert entry["mean_dice"]["none"] == pytest.approx(np.mean(dice_raw[int(v)]))
        for step in entry["steps"]:  # kept exactly when it raised the mean Dice
            assert step["kept"] == (step["mean_dice_after"] > step["mean_dice_before"])
    for case in TEST:
        raw = read_image(results / "predictions_raw" / f"{case}.nii.gz")[0]
        final = read_image(results / "predictions" / f"{case}.nii.gz")[0]
        np.testing.assert_array_equal(final, apply_postprocessing(raw, plan))


def test_assessment_tables_and_figure(results):
    calibration = pd.read_csv(results / "assessment" / "calibration.tsv", sep="\t").set_index("region")
    assert set(calibration.index) == {"all", "foreground_region"}
    assert calibration["ece"].between(0, 1).all() and (calibration["cases"] == len(TRAIN)).all()
    assert calibration.loc["all", "voxels"] > calibration.loc["foreground_region", "voxels"] > 0
    overlap = pd.read_csv(results / "assessment" / "error_overlap.tsv", sep="\t")
    assert len(overlap) == 3 * 19 and overlap["dice_pooled"].between(0, 1).all()
    assert overlap.groupby("map")["best"].sum().eq(1).all()
    correlation = pd.read_csv(results / "assessment" / "score_correlation.tsv", sep="\t")
    assert "mean_normalised_entropy" in set(correlation["score"])
    assert (results / "report" / "reliability.png").read_bytes().startswith(b"\x89PNG")
    assert "predicted_dice_foreground" in set(correlation["score"])
    failures = pd.read_csv(results / "assessment" / "failure_detection.tsv", sep="\t")
    assert {"mean_normalised_entropy", "predicted_dice_foreground", "predicted_dice_lobe"} <= set(failures["score"])
    assert {"pairwise_dice_foreground", "pairwise_dice_organ"} <= set(failures["score"])
    assert "members" not in set(failures["score"]) and "foreground_voxels" not in set(failures["score"])
    assert failures["aurc"].dropna().is_monotonic_increasing  # best first
    nonempty_cv = sum(
        pd.read_csv(results / "uncertainty" / f"{case}.tsv", sep="\t").loc[0, "foreground_voxels"] > 0 for case in TRAIN
    )
    assert failures["cases"].max() == nonempty_cv
    assert (results / "report" / "risk_coverage.png").read_bytes().startswith(b"\x89PNG")
    test_failures = pd.read_csv(results / "assessment" / "failure_detection_test.tsv", sep="\t")
    assert set(test_failures["score"]) == set(failures["score"])  # the same table over the labelled test cases
    assert 0 < test_failures["cases"].max() <= len(TEST)
    review = pd.read_csv(results / "assessment" / "review.tsv", sep="\t")
    assert sorted(review["case"]) == sorted(TRAIN + TEST) and list(review["rank"]) == list(range(1, 7))
    assert set(review.loc[review["case"].isin(TEST), "set"]) == {"test"}
    choice = json.loads((results / "assessment" / "review_score.json").read_text())  # predict.review_score: auto
    score = choice["score"]
    assert score in {"mean_member_entropy", "member_predicted_dice_foreground"}  # the same on cv and test cases
    assert score in review.columns and score in set(failures["score"])
    if "aurc" in choice:  # the candidate every case has with the lowest AURC on the cross-validation
        assert choice["aurc"] == failures.set_index("score").loc[choice["candidates"], "aurc"].min()
    nonempty = review[review["foreground_voxels"] > 0][score]
    assert (
        nonempty.is_monotonic_decreasing
        if score_direction(score) == "higher_is_riskier"
        else nonempty.is_monotonic_increasing
    )
    assert review["review"].any()  # at least the highest-scoring quarter of the cross-validation cases
