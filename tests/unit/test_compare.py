"""carve.evaluation.compare: the shared model against individual models, per dataset (known answers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carve.evaluation.compare import compare_datasets, comparison_table


def _rows(values):
    return pd.DataFrame(
        [{"case": c, "set": "cv", "label": lab, "dice": d, "nsd": d, "hd95_mm": 1.0 - d} for c, lab, d in values]
    )


SHARED = _rows([("k1", "femur", 0.9), ("k2", "femur", 0.7), ("a1", "talus", 0.6), ("a1", "tibia", 0.8)])
INDIVIDUAL = _rows([("k1", "femur", 0.8), ("k2", "femur", 0.8), ("a1", "talus", 0.5), ("a1", "tibia", np.nan)])
DATASETS = {"k1": "knee", "k2": "knee", "a1": "ankle"}


def test_comparison_table_pairs_cases_and_averages_per_dataset():
    individual = INDIVIDUAL.assign(dataset=INDIVIDUAL["case"].map(DATASETS))
    table = comparison_table(SHARED, individual, DATASETS).set_index(["dataset", "label"])
    knee = table.loc[("knee", "femur")]
    assert knee["dice_shared"] == pytest.approx(0.8) and knee["dice_individual"] == pytest.approx(0.8)
    assert knee["dice_difference"] == pytest.approx(0.0) and knee["shared_better_cases"] == 1
    # an undefined individual value leaves the pair out of both means
    tibia = table.loc[("ankle", "tibia")]
    assert np.isnan(tibia["dice_shared"]) and np.isnan(tibia["dice_individual"])
    mean = table.loc[("ankle", "mean_foreground")]
    assert mean["dice_shared"] == pytest.approx(0.7) and mean["dice_individual"] == pytest.approx(0.5)
    assert table.loc[("ankle", "talus")]["hd95_mm_difference"] == pytest.approx(-0.1)


def test_test_cases_and_unknown_cases_are_not_compared():
    shared = pd.concat([SHARED, _rows([("t1", "femur", 0.1)]).assign(set="test")])
    individual = INDIVIDUAL.assign(dataset=INDIVIDUAL["case"].map(DATASETS))
    table = comparison_table(shared, individual, DATASETS)
    assert table.loc[table["label"] == "femur", "cases"].item() == 2
    with pytest.raises(ValueError, match="no case has both"):
        comparison_table(SHARED, individual.assign(case="zz"), DATASETS)


def test_compare_datasets_writes_table_and_figure(tmp_path):
    SHARED.to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    individual = INDIVIDUAL.assign(dataset=INDIVIDUAL["case"].map(DATASETS))
    individual.to_csv(tmp_path / "knee.tsv", sep="\t", index=False)
    table = compare_datasets(
        tmp_path / "cases.tsv", [tmp_path / "knee.tsv"], DATASETS, tmp_path / "d.tsv", tmp_path / "d.png"
    )
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "d.tsv", sep="\t").shape[0] == len(table) == 5
