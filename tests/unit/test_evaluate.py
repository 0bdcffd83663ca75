import numpy as np
import pandas as pd
import pytest

from carve.evaluation.evaluate import EvaluationError, evaluate_case, summarise, summarise_files, write_table
from carve.imaging.io import Geometry, write_image

LABELS = {1: "a", 2: "b"}


def test_evaluate_case_known_answer(tmp_path, oblique_geometry):
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:5, 2:8, 2:8] = 1  # 144 voxels
    pred = ref.copy()
    pred[1, 2:8, 2:8] = 0  # 36 voxels missed
    ref[0, 0, 0] = 2
    write_image(tmp_path / "ref.nii.gz", ref, oblique_geometry)
    write_image(tmp_path / "pred.nii.gz", pred, oblique_geometry)
    table = evaluate_case("c1", "test", tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz", LABELS)
    a = table.set_index("label").loc["a"]
    assert a["case"] == "c1" and a["set"] == "test"
    assert a["dice"] == pytest.approx(2 * 108 / (144 + 108))
    assert a["iou"] == pytest.approx(108 / 144)
    b = table.set_index("label").loc["b"]
    assert b["dice"] == 0.0 and b["recall"] == 0.0


def test_grid_mismatch_is_refused(tmp_path, oblique_geometry):
    write_image(tmp_path / "ref.nii.gz", np.zeros((4, 4, 4), np.uint8), oblique_geometry)
    write_image(tmp_path / "pred.nii.gz", np.zeros((4, 4, 5), np.uint8), Geometry((1, 1, 1)))
    with pytest.raises(EvaluationError, match="case 'c'.*different grids"):
        evaluate_case("c", "cv", tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz", LABELS)


def test_summary_per_set_and_label(tmp_path):
    rows = [
        {"case": "x", "set": "cv", "label": "a", "dice": 0.8, "iou": 0.6},
        {"case": "y", "set": "cv", "label": "a", "dice": 0.6, "iou": 0.4},
        {"case": "x", "set": "cv", "label": "b", "dice": 1.0, "iou": 1.0},
        {"case": "y", "set": "cv", "label": "b", "dice": np.nan, "iou": np.nan},
        {"case": "t", "set": "test", "label": "a", "dice": 0.9, "iou": 0.8},
    ]
    cases, summary = summarise([pd.DataFrame(rows)])
    s = summary.set_index(["set", "label"])
    assert s.loc[("cv", "a"), "dice_mean"] == pytest.approx(0.7)
    assert s.loc[("cv", "a"), "dice_sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert s.loc[("cv", "b"), "dice_mean"] == pytest.approx(1.0)  # NaN ignored
    assert s.loc[("test", "a"), "cases"] == 1
    # mean foreground: per-case mean over labels, then across cases: x -> 0.9, y -> 0.6
    assert s.loc[("cv", "mean_foreground"), "dice_mean"] == pytest.approx(0.75)
    write_table(tmp_path / "c1.tsv", pd.DataFrame(rows[:2]))
    write_table(tmp_path / "c2.tsv", pd.DataFrame(rows[4:]))
    out = summarise_files([tmp_path / "c1.tsv", tmp_path / "c2.tsv"], tmp_path / "cases.tsv", tmp_path / "sum.tsv")
    assert len(pd.read_csv(tmp_path / "cases.tsv", sep="\t")) == 3
    assert set(out["set"]) == {"cv", "test"}


def test_summary_skips_nan_and_inf_as_documented():
    """docs/metrics.md: statistics use the finite values only; the foreground mean of a case averages its labels
    skipping NaN, so one infinite label distance makes that case's foreground distance infinite and skipped."""
    inf, nan = float("inf"), float("nan")
    rows = [
        {"case": "x", "set": "cv", "label": "a", "hd95_mm": 2.0, "recall": 0.5},
        {"case": "x", "set": "cv", "label": "b", "hd95_mm": inf, "recall": nan},
        {"case": "y", "set": "cv", "label": "a", "hd95_mm": 4.0, "recall": 1.0},
        {"case": "y", "set": "cv", "label": "b", "hd95_mm": 6.0, "recall": 1.0},
    ]
    _, summary = summarise([pd.DataFrame(rows)])
    s = summary.set_index(["set", "label"])
    assert s.loc[("cv", "a"), "hd95_mm_mean"] == pytest.approx(3.0)
    assert s.loc[("cv", "b"), "hd95_mm_mean"] == pytest.approx(6.0)  # the infinite case is left out
    assert s.loc[("cv", "b"), "hd95_mm_n"] == 1 and s.loc[("cv", "b"), "cases"] == 2  # ... and counted as such
    assert s.loc[("cv", "b"), "cases"] == 2
    assert np.isnan(s.loc[("cv", "b"), "hd95_mm_sd"])  # one finite value
    assert s.loc[("cv", "b"), "recall_mean"] == pytest.approx(1.0)
    fg = s.loc[("cv", "mean_foreground")]
    assert fg["hd95_mm_mean"] == pytest.approx(5.0)  # case x is infinite, only y = (4 + 6) / 2 counts
    assert fg["recall_mean"] == pytest.approx(0.75)  # x = 0.5 (NaN label skipped), y = 1.0
    assert fg["cases"] == 2
