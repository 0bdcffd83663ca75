"""Postprocessing operations and the cross-validation decision, with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carve.imaging.io import read_image, write_image
from carve.prediction.postprocess import (
    PostprocessOptions,
    apply_postprocessing,
    candidate_chains,
    case_dice_table,
    decide_from_tables,
    decide_postprocessing,
    dice,
    fill_holes,
    largest_component,
    load_postprocessing,
    postprocess_file,
)

SHAPE = (8, 12, 12)


def organ_with_island_and_hole() -> np.ndarray:
    """Label 1: a 4x6x6 box with a one-voxel hole and a one-voxel island; label 2 inside label 1's box."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 3:9, 3:9] = 1
    labels[3, 5, 5] = 0  # hole (background enclosed by 1)
    labels[4, 6, 6] = 2  # another label enclosed by 1: never filled over
    labels[0, 0, 0] = 1  # island
    labels[7, 11, 11] = 2  # second component of label 2
    return labels


def test_largest_component_removes_islands_of_one_label_only() -> None:
    labels = organ_with_island_and_hole()
    out = largest_component(labels, 1)
    assert out[0, 0, 0] == 0 and out[2, 3, 3] == 1
    assert (out == 2).sum() == (labels == 2).sum()  # label 2 untouched
    assert labels[0, 0, 0] == 1  # input unchanged
    # 26-connectivity: a voxel touching by a corner stays
    diagonal = labels.copy()
    diagonal[1, 2, 2] = 1
    assert largest_component(diagonal, 1)[1, 2, 2] == 1


def test_fill_holes_fills_background_only() -> None:
    labels = organ_with_island_and_hole()
    out = fill_holes(labels, 1)
    assert out[3, 5, 5] == 1
    assert out[4, 6, 6] == 2  # the enclosed other label stays
    assert ((out != labels).sum()) == 1
    np.testing.assert_array_equal(fill_holes(labels, 3), labels)  # absent label: nothing to do


def test_dice_and_chains() -> None:
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    assert dice(a, b) == 1.0
    a[0, :2, :2] = True
    b[0, :2, :1] = True
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 2))
    assert candidate_chains(["largest_component", "fill_holes"]) == [
        (),
        ("largest_component",),
        ("fill_holes",),
        ("largest_component", "fill_holes"),
    ]


def test_options_are_checked_and_ordered() -> None:
    assert PostprocessOptions(("fill_holes", "largest_component")).operations == ("largest_component", "fill_holes")
    with pytest.raises(ValueError, match="unknown postprocessing"):
        PostprocessOptions(("open",))
    with pytest.raises(ValueError, match="min_dice_gain"):
        PostprocessOptions(min_dice_gain=-0.1)


def cases_where_components_help_label_1_and_hurt_label_2() -> list[tuple[np.ndarray, np.ndarray]]:
    """Label 1: the prediction has a false island (removing it helps). Label 2: the reference has two parts,
    both predicted (keeping only the largest hurts)."""
    out = []
    for shift in range(3):
        reference = np.zeros(SHAPE, np.uint8)
        reference[2:6, 2 + shift : 7 + shift, 2:7] = 1
        reference[1:3, 9:11, 9:11] = 2
        reference[5:7, 9:11, 9:11] = 2
        prediction = reference.copy()
        prediction[0, 0, 11 - shift] = 1  # false positive island of label 1
        out.append((reference, prediction))
    return out


def test_decision_keeps_what_helps_per_label() -> None:
    pairs = cases_where_components_help_label_1_and_hurt_label_2()
    options = PostprocessOptions()
    tables = [case_dice_table(r, p, [1, 2], options.operations) for r, p in pairs]
    assert tables[0][1]["none"] < 1.0 and tables[0][1]["largest_component"] == 1.0
    assert tables[0][2]["none"] == 1.0 and tables[0][2]["largest_component"] < 1.0
    decisions = decide_from_tables(tables, [1, 2], options)
    assert decisions[1].apply == ["largest_component"]
    assert decisions[2].apply == []  # fill_holes changes nothing: no gain, not kept
    steps = {s["operation"]: s for s in decisions[1].steps}
    assert steps["fill_holes"]["mean_dice_before"] == steps["fill_holes"]["mean_dice_after"] == 1.0
    assert not steps["fill_holes"]["kept"]
    # a required gain larger than the measured one keeps nothing
    strict = decide_from_tables(tables, [1, 2], PostprocessOptions(min_dice_gain=0.5))
    assert strict[1].apply == []
    with pytest.raises(ValueError, match="at least one"):
        decide_from_tables([], [1], options)


def test_decision_file_round_trip_and_application(tmp_path, oblique_geometry) -> None:
    pairs = cases_where_components_help_label_1_and_hurt_label_2()
    predictions, references = [], []
    for i, (reference, prediction) in enumerate(pairs):
        references.append(write_image(tmp_path / f"ref_{i}.nii.gz", reference, oblique_geometry))
        predictions.append(write_image(tmp_path / f"case_{i}.nii.gz", prediction, oblique_geometry))
    out = tmp_path / "postprocessing.json"
    document = decide_postprocessing(predictions, references, {1: "organ", 2: "vessel"}, PostprocessOptions(), out)
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(document))
    assert stored["cases"] == ["case_0", "case_1", "case_2"]
    assert stored["labels"]["1"]["name"] == "organ" and stored["labels"]["1"]["apply"] == ["largest_component"]
    mean_dice = stored["labels"]["1"]["mean_dice"]
    assert set(mean_dice) == {"none", "largest_component", "fill_holes", "largest_component+fill_holes"}
    assert mean_dice["largest_component"] == 1.0 > mean_dice["none"]
    plan = load_postprocessing(out)
    assert plan == {1: ("largest_component",), 2: ()}

    changed = postprocess_file(predictions[0], out, tmp_path / "post.nii.gz")
    result, geometry = read_image(tmp_path / "post.nii.gz")
    assert changed == {1: 1, 2: 0}
    np.testing.assert_array_equal(result, pairs[0][0])  # the postprocessed prediction is the reference
    assert geometry.is_close(oblique_geometry, 1e-4, SHAPE)


def test_apply_postprocessing_and_bad_files(tmp_path) -> None:
    labels = organ_with_island_and_hole()
    both = apply_postprocessing(labels, {1: ("largest_component", "fill_holes"), 2: ()})
    assert both[0, 0, 0] == 0 and both[3, 5, 5] == 1 and both[7, 11, 11] == 2
    np.testing.assert_array_equal(apply_postprocessing(labels, {}), labels)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a carve-postprocessing file"):
        load_postprocessing(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="cannot read postprocessing"):
        load_postprocessing(bad)
