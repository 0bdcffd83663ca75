"""Several datasets, one network, through the Snakefile: union labels, per-dataset predictions and evaluation,
stratified folds, individual models on the same folds and the comparison table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_snakemake

from carve.imaging.io import read_image

pytestmark = pytest.mark.e2e
CONFIG = REPO / "tests" / "e2e" / "multidomain.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("multidomain")
    shutil.copytree(REPO / "config", workdir / "config")
    out = run_snakemake(workdir, "--cores", "2", configs=(CONFIG,))
    assert out.returncode == 0, out.stderr[-5000:]
    return workdir / "results" / "md"


def test_plans_and_labels_are_in_the_union_space(run):
    plans = json.loads((run / "plans.json").read_text())
    assert plans["labels"] == {"1": "organ", "2": "lobe", "3": "duct"} and plans["n_classes"] == 4
    assert plans["datasets"]["t1"]["classes"] == [0, 1, 2] and plans["datasets"]["t2"]["classes"] == [0, 1, 3]
    sheet = pd.read_csv(run / "data" / "cases.tsv", sep="\t")
    for case, dataset in zip(sheet["case"], sheet["dataset"], strict=True):
        label = set(np.unique(read_image(run / "nifti" / case / "label.nii.gz")[0]).tolist())
        assert label <= ({0, 1, 2} if dataset == "t1" else {0, 1, 3}) and len(label) > 1, (case, label)


def test_each_case_gets_only_its_datasets_labels(run):
    sheet = pd.read_csv(run / "data" / "cases.tsv", sep="\t")
    for case, dataset, role in zip(sheet["case"], sheet["dataset"], sheet["role"], strict=True):
        path = run / ("cv" if role == "train" else "predictions") / f"{case}.nii.gz"
        values = set(np.unique(read_image(path)[0]).tolist())
        assert values <= ({0, 1, 2} if dataset == "t1" else {0, 1, 3}), (case, values)
    cases = pd.read_csv(run / "metrics" / "cases.tsv", sep="\t")
    by_case = cases.groupby("case")["label"].apply(set).to_dict()
    for case, dataset in zip(sheet["case"], sheet["dataset"], strict=True):
        if case in by_case:
            assert by_case[case] == ({"organ", "lobe"} if dataset == "t1" else {"organ", "duct"})


def test_folds_are_stratified_and_individual_models_use_their_dataset_only(run):
    splits = json.loads((run / "splits.json").read_text())["folds"]
    sheet = pd.read_csv(run / "data" / "cases.tsv", sep="\t").set_index("case")["dataset"]
    for k, fold in enumerate(splits):
        assert sorted(sheet[c] for c in fold["val"]) == ["t1", "t2"]
        for dataset in ("t1", "t2"):
            config = json.loads((run / "individual" / dataset / f"fold_{k}" / "config.json").read_text())
            assert config["dataset"] == dataset
            assert config["train_cases"] == [c for c in fold["train"] if sheet[c] == dataset]
    shared = json.loads((run / "models" / "fold_0" / "config.json").read_text())
    assert shared["train_cases"] == splits[0]["train"] and shared["train"]["contrastive_weight"] == 0.1


def test_comparison_table_has_both_models_per_dataset(run):
    table = pd.read_csv(run / "metrics" / "datasets.tsv", sep="\t")
    assert set(zip(table["dataset"], table["label"], strict=True)) == {
        ("t1", "organ"), ("t1", "lobe"), ("t1", "mean_foreground"),
        ("t2", "organ"), ("t2", "duct"), ("t2", "mean_foreground"),
    }  # fmt: skip
    assert table["cases"].eq(2).all()
    assert np.isfinite(table[["dice_shared", "dice_individual"]].to_numpy()).all()
    cases = pd.read_csv(run / "metrics" / "cases.tsv", sep="\t")
    t1_organ = cases[
        (cases["set"] == "cv") & (cases["label"] == "organ") & cases["case"].isin(["demo_000", "demo_002"])
    ]
    row = table[(table["dataset"] == "t1") & (table["label"] == "organ")].iloc[0]
    assert row["dice_shared"] == pytest.approx(t1_organ["dice"].mean(), abs=1e-5)
    assert (run / "report" / "datasets.png").read_bytes()[:4] == b"\x89PNG"


def test_bundle_of_several_datasets_predicts_a_sheet_with_their_names(run, tmp_path):
    """Inference only with the run's bundle: each scan is predicted as its sheet row's dataset (equal to the
    trained run's predictions), and a folder of scans, which cannot say so, is refused at parse time."""
    import yaml

    workdir = run.parent.parent
    rows = ["case\timage\tlabel\trole\tdataset"]
    for case, dataset in (("demo_004", "t1"), ("demo_005", "t2")):
        shutil.copy(run / "nifti" / case / "image.nii.gz", tmp_path / f"{case}.nii.gz")
        rows.append(f"new_{case}\t{case}.nii.gz\t\ttest\t{dataset}")
    (tmp_path / "cases.tsv").write_text("\n".join(rows) + "\n")
    config = {"cases": str(tmp_path / "cases.tsv"), "bundle": str(run / "bundle"), "results": "inferred"}
    (tmp_path / "infer.yaml").write_text(yaml.safe_dump({**config, "device": "cpu", "threads": 1}))
    done = run_snakemake(tmp_path, "--cores", "2", configs=(tmp_path / "infer.yaml",))
    assert done.returncode == 0, done.stderr[-4000:]
    for case in ("demo_004", "demo_005"):
        ours = read_image(tmp_path / "inferred" / "predictions" / f"new_{case}.nii.gz")[0]
        np.testing.assert_array_equal(ours, read_image(run / "predictions" / f"{case}.nii.gz")[0])
    (tmp_path / "scans").mkdir()
    shutil.copy(tmp_path / "demo_004.nii.gz", tmp_path / "scans" / "a.nii.gz")
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump({**config, "cases": str(tmp_path / "scans")}))
    refused = run_snakemake(tmp_path, "--dry-run", configs=(tmp_path / "folder.yaml",))
    assert refused.returncode != 0
    assert "was trained on datasets t1, t2: give a sheet whose `dataset` column" in refused.stdout + refused.stderr
    assert workdir.exists()
