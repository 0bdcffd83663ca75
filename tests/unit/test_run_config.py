"""carve.pipeline.run_config: the run resolved from a config and its sheet, and every config or sheet problem,
without the
rule engine (tests/e2e/test_config_errors.py keeps the few checks where Snakemake is the point)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carve.imaging.io import Geometry, write_image
from carve.pipeline.run_config import ConfigError, resolve_run, validate_with_defaults
from carve.training.budget import DEFAULT_TIME_BUDGET_MIN


@pytest.fixture
def data(tmp_path: Path) -> Path:
    g = Geometry((2.0, 1.0, 1.0))
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}_img.nii.gz", np.zeros((4, 4, 4), np.float32), g)
        write_image(tmp_path / f"{name}_lab.nii.gz", np.zeros((4, 4, 4), np.uint8), g)
    return tmp_path


def sheet(path: Path, rows: list[tuple[str, ...]], dataset: bool = False) -> str:
    header = "case\timage\tlabel\trole" + ("\tdataset" if dataset else "")
    path.write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return str(path)


def train_rows(names: str = "abc") -> list[tuple[str, ...]]:
    return [(n, f"{n}_img.nii.gz", f"{n}_lab.nii.gz", "train") for n in names]


def test_a_run_is_resolved_with_the_schemas_defaults(data: Path) -> None:
    rows = [*train_rows(), ("t", "c_img.nii.gz", "", "test")]
    run = resolve_run({"cases": sheet(data / "s.tsv", rows), "labels": {1: "organ"}, "folds": 3})
    assert run.labels == {1: "organ"} and run.train == ["a", "b", "c"] and run.test == ["t"]
    assert run.labelled_test == [] and run.folds == [0, 1, 2]
    assert run.config["predict"]["overlap"] == 0.5 and run.config["plan"]["mirror_axes"] == []
    assert run.config["results"] == "results" and run.config["dicom"]["tilt"] == "resample"
    assert run.segmentation("a") == "results/cv/a.nii.gz" and run.segmentation("t") == "results/predictions/t.nii.gz"
    assert run.fold_models() == [f"results/models/fold_{k}/model.pt" for k in range(3)]
    outputs = run.all_outputs()
    assert outputs[-1] == "results/manifest.json" and "results/bundle" in outputs
    assert "results/dicom/t/segmentation.seg.dcm" not in outputs  # t is a NIfTI file, not a DICOM series
    assert run.train_runtime_min() == int(60 + 2 * DEFAULT_TIME_BUDGET_MIN)
    assert "review_score" not in run.predict_options() and run.predict_options()["overlap"] == 0.5


def test_the_default_budget_is_the_trainers() -> None:
    from carve.training.budget import DEFAULT_ITERATIONS_PER_EPOCH
    from carve.training.train import TrainConfig

    assert TrainConfig().time_budget_min == DEFAULT_TIME_BUDGET_MIN
    assert TrainConfig().iterations_per_epoch == DEFAULT_ITERATIONS_PER_EPOCH


def test_a_count_of_iterations_gets_the_scheduler_time_of_an_hour_budget(data: Path) -> None:
    base = {"cases": sheet(data / "s.tsv", train_rows()), "labels": {1: "organ"}, "folds": 3}
    assert resolve_run({**base, "train": {"epochs": 3}}).train_runtime_min() == 60 + 2 * 60
    assert resolve_run({**base, "train": {"iterations": 300}}).train_runtime_min() == 60 + 2 * 60
    assert resolve_run({**base, "train": {"time_budget_min": 10}}).train_runtime_min() == 60 + 2 * 10


def test_predict_defaults_live_in_the_schema_and_predict_options_alike() -> None:
    from dataclasses import fields

    from carve.prediction.predict import PredictOptions

    config = {"cases": "x", "labels": {"1": "a"}}
    validate_with_defaults(config, Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml")
    for f in fields(PredictOptions):
        if f.name in config["predict"]:
            assert config["predict"][f.name] == f.default, f.name


def test_unknown_key_and_bad_values_name_the_key(data: Path) -> None:
    path = sheet(data / "s.tsv", train_rows())
    with pytest.raises(ConfigError, match="Additional properties.*'fodls' was unexpected"):
        resolve_run({"cases": path, "labels": {1: "a"}, "fodls": 3})
    with pytest.raises(ConfigError, match="predict.overlap: 1.5"):
        resolve_run({"cases": path, "labels": {1: "a"}, "predict": {"overlap": 1.5}})
    with pytest.raises(ConfigError, match="labels"):
        resolve_run({"cases": path, "labels": {0: "background"}, "folds": 2})
    with pytest.raises(ConfigError, match="config labels: names must be unique"):
        resolve_run({"cases": path, "labels": {1: "organ", 2: "organ"}, "folds": 3})
    with pytest.raises(ConfigError, match="predict.mirror_axes is gone.*plan.mirror_axes"):
        resolve_run({"cases": path, "labels": {1: "a"}, "predict": {"mirror_axes": [0]}})


def test_sheet_problems_name_row_case_and_file(data: Path) -> None:
    rows = [("a", "a_img.nii.gz", "a_lab.nii.gz", "train"), ("a", "b_img.nii.gz", "b_lab.nii.gz", "train")]
    rows.append(("c", "nope.nii.gz", "", "test"))
    with pytest.raises(ConfigError) as err:
        resolve_run({"cases": sheet(data / "s.tsv", rows), "labels": {1: "a"}, "folds": 2})
    assert "row 3, case 'a': duplicate case id" in str(err.value)
    assert "row 4, case 'c': image" in str(err.value) and "nope.nii.gz does not exist" in str(err.value)
    rows = [("a", "a_img.nii.gz", "a_lab.nii.gz", "train"), ("t", "", "", "test")]
    with pytest.raises(ConfigError, match="case 't': no image given"):
        resolve_run({"cases": sheet(data / "s1.tsv", rows), "labels": {1: "a"}, "folds": 2})
    with pytest.raises(ConfigError, match=r"2 training case\(s\) for 5 folds"):
        resolve_run({"cases": sheet(data / "s2.tsv", train_rows("ab")), "labels": {1: "a"}, "folds": 5})


DATASETS = {"knee": {"labels": {1: "femur"}}, "ankle": {"labels": {1: "talus", 2: "femur"}}}


def test_datasets_give_the_labels_and_each_case_names_its_dataset(data: Path) -> None:
    rows = [(n, f"{n}_img.nii.gz", f"{n}_lab.nii.gz", "train", d) for n, d in (("a", "knee"), ("b", "ankle"))]
    rows.append(("c", "c_img.nii.gz", "c_lab.nii.gz", "train", ""))
    with pytest.raises(ConfigError, match="row 4, case 'c': column dataset: no dataset"):
        resolve_run({"cases": sheet(data / "s.tsv", rows, dataset=True), "datasets": DATASETS, "folds": 2})
    rows[2] = ("c", "c_img.nii.gz", "c_lab.nii.gz", "train", "knee")
    config = {"cases": sheet(data / "s.tsv", rows, dataset=True), "datasets": DATASETS, "folds": 2}
    run = resolve_run(config)
    assert run.labels == {1: "femur", 2: "talus"}  # the union by name, in the config's order
    assert run.case_label_names("a") == {v: n for v, n in run.labels.items() if n == "femur"}
    assert run.plan_datasets()["knee"]["cases"] == [0, 2] and run.individual_metrics() == []
    with pytest.raises(ConfigError, match="differ from the union of the datasets' labels"):
        resolve_run({**config, "labels": {1: "nope"}})
    with pytest.raises(ConfigError, match=r"datasets without enough training cases.*\{'ankle': 1\}"):
        resolve_run({**config, "individual_models": True})


def test_learning_curve_drops_sizes_that_leave_no_case_out(data: Path) -> None:
    warnings: list[str] = []
    config = {"cases": sheet(data / "s.tsv", train_rows()), "labels": {1: "a"}, "folds": 2}
    run = resolve_run({**config, "learning_curve": {"sizes": [1, 2, 3], "draws": 1}}, warn=warnings.append)
    assert run.learning_curve_sizes() == [1, 2] and "size(s) [3] dropped" in warnings[0]
    assert run.learning_curve_tables() == [f"results/learning_curve/n{n}_draw0/metrics.tsv" for n in (1, 2)]
    with pytest.raises(ConfigError, match="no size fits"):
        resolve_run({**config, "learning_curve": {"sizes": [3, 4], "draws": 1}})


def test_a_missing_bundle_is_one_clear_error(data: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        resolve_run({"cases": str(data), "bundle": str(data / "nowhere")})


def test_a_label_named_like_the_mean_over_labels_is_refused(data: Path) -> None:
    base = {"cases": sheet(data / "s.tsv", train_rows()), "folds": 3}
    with pytest.raises(ConfigError, match="1: foreground is a reserved name"):
        resolve_run({**base, "labels": {1: "foreground", 2: "lesion"}})
    assert resolve_run({**base, "labels": {1: "foreground_lesion"}}).labels == {1: "foreground_lesion"}


# ---- semi-supervised: unlabelled rows, the transductive switch and their errors ---------------------------------
def test_unlabelled_rows_are_read_by_training_only(data: Path) -> None:
    rows = [*train_rows(), ("t", "c_img.nii.gz", "c_lab.nii.gz", "test"), ("u1", "a_img.nii.gz", "", "unlabelled")]
    rows.append(("u0", "b_img.nii.gz", "", "unlabelled"))
    config = {"cases": sheet(data / "s.tsv", rows), "labels": {1: "organ"}, "folds": 3}
    run = resolve_run({**config, "semi_supervised": {"method": "mean_teacher"}})
    assert run.train == ["a", "b", "c"] and run.test == ["t"] and run.predicted == ["a", "b", "c", "t"]
    assert run.unlabelled_images == ["u0", "u1"]
    assert run.unlabelled_preprocessed() == [f"results/preprocessed/unlabelled/{c}.npz" for c in ("u0", "u1")]
    assert run.budget_semi_supervised() == {"method": "mean_teacher", "unlabelled_per_batch": 2}
    mixing = resolve_run({**config, "semi_supervised": {"method": "mean_teacher", "copy_paste": True}})
    assert mixing.budget_semi_supervised() == {"method": "mean_teacher", "unlabelled_per_batch": 2, "copy_paste": True}
    assert run.semi_supervised_params()["method"] == "mean_teacher"
    outputs = run.all_outputs()
    assert not [o for o in outputs if "/u0" in o or "/u1" in o]  # never segmented, meshed or previewed
    assert "results/cv/a.nii.gz" in outputs and "results/predictions/t.nii.gz" in outputs
    assert str(data / "a_img.nii.gz") in run.manifest_sources()
    assert "u0" in run.constraints()["unlabelled_case"] and "t" not in run.constraints()["unlabelled_case"]
    # transductive: the test case's image too (never its label)
    both = resolve_run({**config, "semi_supervised": {"method": "mean_teacher", "use_test_images": True}})
    assert both.unlabelled_images == ["t", "u0", "u1"] and both.predicted == ["a", "b", "c", "t"]
    # method none: nothing unlabelled is read, the plan is not timed for it, and the user is told
    warnings: list[str] = []
    plain = resolve_run(config, warn=warnings.append)
    assert plain.unlabelled_images == [] and plain.unlabelled_preprocessed() == []
    assert plain.budget_semi_supervised() == {} and plain.semi_supervised_params() == {"method": "none"}
    assert len(warnings) == 1 and "2 case(s) of role unlabelled" in warnings[0] and "method is none" in warnings[0]


def test_semi_supervised_errors_name_the_key_or_the_row(data: Path) -> None:
    labelled = [*train_rows()]
    config = {"cases": sheet(data / "s.tsv", labelled), "labels": {1: "organ"}, "folds": 3}
    with pytest.raises(ConfigError, match=r"semi_supervised.method: 'mean_teacher' needs images without labels"):
        resolve_run({**config, "semi_supervised": {"method": "mean_teacher"}})
    with pytest.raises(ConfigError, match="use_test_images is on, but there are no test cases"):
        resolve_run({**config, "semi_supervised": {"method": "mean_teacher", "use_test_images": True}})
    with pytest.raises(ConfigError, match="semi_supervised"):  # the schema names the key
        resolve_run({**config, "semi_supervised": {"method": "mean_teacher", "ema_decay": 1.0}})
    with pytest.raises(ConfigError, match="semi_supervised"):
        resolve_run({**config, "semi_supervised": {"method": "co_training"}})
    bad = [*labelled, ("u", "a_img.nii.gz", "a_lab.nii.gz", "unlabelled")]
    with pytest.raises(ConfigError, match=r"row 5, case 'u': an unlabelled case has no label"):
        resolve_run({**config, "cases": sheet(data / "bad.tsv", bad)})


def test_self_training_rounds_name_each_jobs_model_and_pseudo_labels(data: Path) -> None:
    rows = [*train_rows(), ("u", "a_img.nii.gz", "", "unlabelled")]
    config = {"cases": sheet(data / "s.tsv", rows), "labels": {1: "organ"}, "folds": 3}
    run = resolve_run({**config, "semi_supervised": {"method": "self_training", "rounds": 2}})
    assert run.self_training_rounds() == 2 and run.budget_semi_supervised() == {}  # a student's step costs the same
    assert run.round_model(0, 1) == "results/models/round_0/fold_1/model.pt"
    assert run.round_model(2, 1) == "results/models/fold_1/model.pt"  # the last round's students are the run's models
    assert run.round_pseudo_labels(0, 1) == [] and run.round_pseudo_labels(2, 1) == [
        "results/pseudo_labels/round_1/fold_1"
    ]
    assert run.fold_pseudo_labels(2) == ["results/pseudo_labels/round_1/fold_2"]
    assert run.round_semi_supervised(0) == {"method": "none"}
    assert run.round_semi_supervised(1)["method"] == "self_training"
    stages = run.training_stages()
    assert [s["stage"] for s in stages] == ["teacher round 0"] * 3 + ["teacher round 1"] * 3 + ["final"] * 3
    assert stages[4]["config"] == "results/models/round_1/fold_1/config.json"
    assert stages[4]["benchmark"] == "results/benchmarks/train_round_fold/round_1/fold_1.tsv"
    assert stages[4]["pseudo_labels"] == "results/pseudo_labels/round_0/fold_1" and stages[0]["pseudo_labels"] is None
    supervised = resolve_run(config, warn=lambda _: None)
    assert supervised.self_training_rounds() == 0 and supervised.fold_pseudo_labels(0) == []
    assert [s["stage"] for s in supervised.training_stages()] == ["final"] * 3
    assert supervised.training_stages()[0]["benchmark"] == "results/benchmarks/train_fold/fold_0.tsv"
