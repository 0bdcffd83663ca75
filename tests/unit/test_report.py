"""Report tables and plots (carve.evaluation.report) and the per-case preview (carve.evaluation.preview), on tiny
synthetic data."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import trimesh
import yaml
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from scipy import stats

from carve.evaluation import preview, report
from carve.export.mesh import export_label_meshes
from carve.imaging.io import Geometry, write_image

SPACING = (2.5, 0.8, 1.1)


def cases_table() -> pd.DataFrame:
    rows = [
        ("a", "cv", "organ", 1, 0.8, 0.9, np.nan),
        ("a", "cv", "lobe", 2, 0.4, 0.5, 0.5),
        ("b", "cv", "organ", 1, 0.6, 0.7, 0.7),
        ("b", "cv", "lobe", 2, 0.2, np.nan, 0.1),
        ("c", "cv", "organ", 1, 0.7, 0.8, 0.6),
        ("c", "cv", "lobe", 2, 0.3, 0.2, 0.3),
        ("t", "test", "organ", 1, 0.9, 1.0, 0.8),
        ("t", "test", "lobe", 2, 0.5, 0.4, 0.6),
    ]
    table = pd.DataFrame(rows, columns=["case", "set", "label", "label_value", "dice", "precision", "recall"])
    table["iou"] = table["dice"] / (2 - table["dice"])
    table["f1"] = table["dice"]
    table["accuracy"] = 0.99
    table["nsd"] = table["dice"]
    table["hd95_mm"] = [1.0, np.inf, 2.0, 3.0, 4.0, 5.0, 1.5, 2.5]
    table["assd_mm"] = 1.0
    return table.sample(frac=1.0, random_state=0)  # order must not matter


def test_seeds_table_mean_and_sd_known_answer():
    table = report.seeds_table(cases_table())
    assert list(zip(table["set"], table["label"], strict=True)) == [
        ("cv", "organ"), ("cv", "lobe"), ("cv", "mean_foreground"),
        ("test", "organ"), ("test", "lobe"), ("test", "mean_foreground"),
    ]  # fmt: skip
    t = table.set_index(["set", "label"])
    assert t.loc[("cv", "organ"), "cases"] == 3
    assert t.loc[("cv", "organ"), "dice_mean"] == pytest.approx(0.7)
    assert t.loc[("cv", "organ"), "dice_sd"] == pytest.approx(0.1)  # SD with n - 1
    assert t.loc[("cv", "lobe"), "precision_mean"] == pytest.approx(0.35)  # NaN left out
    assert t.loc[("cv", "lobe"), "precision_sd"] == pytest.approx(np.std([0.5, 0.2], ddof=1))
    assert t.loc[("cv", "organ"), "recall_mean"] == pytest.approx(0.65)
    # mean foreground: per-case label means 0.6, 0.4, 0.5 -> mean 0.5, SD 0.1
    assert t.loc[("cv", "mean_foreground"), "dice_mean"] == pytest.approx(0.5)
    assert t.loc[("cv", "mean_foreground"), "dice_sd"] == pytest.approx(0.1)
    assert t.loc[("test", "organ"), "dice_mean"] == pytest.approx(0.9)
    assert np.isnan(t.loc[("test", "organ"), "dice_sd"])  # one case: no SD
    assert t.loc[("cv", "organ"), "iou_mean"] == pytest.approx(np.mean([0.8 / 1.2, 0.6 / 1.4, 0.7 / 1.3]))
    assert [c for c in table.columns if c.endswith("_mean")] == [f"{m}_mean" for m in report.SEEDS_METRICS]


def test_seeds_table_files_and_html(tmp_path):
    cases_table().to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    report.write_seeds_table(tmp_path / "cases.tsv", tmp_path / "seeds.tsv", tmp_path / "seeds.html")
    back = pd.read_csv(tmp_path / "seeds.tsv", sep="\t")
    cv_organ = (back["set"] == "cv") & (back["label"] == "organ")
    assert back.loc[cv_organ, "dice_mean"].item() == pytest.approx(0.7)
    page = (tmp_path / "seeds.html").read_text()
    assert "<td>0.700 ± 0.100</td>" in page  # cv organ dice
    assert "<td>0.900</td>" in page  # test organ dice: one case, no SD
    with pytest.raises(ValueError, match="lacks the column"):
        report.seeds_table(cases_table().drop(columns=["recall"]))


def test_mean_sd_text():
    assert report.mean_sd_text(0.81234, 0.0345) == "0.812 ± 0.035"
    assert report.mean_sd_text(0.5, float("nan")) == "0.500"
    assert report.mean_sd_text(float("nan"), float("nan")) == "n/a"


def scores_table(cases: pd.DataFrame) -> pd.DataFrame:
    names = sorted(set(cases["case"]))
    entropy = {"a": 0.2, "b": 0.9, "c": 0.4, "t": 0.1}
    return pd.DataFrame({
        "case": names,
        "mean_normalised_entropy": [entropy[n] for n in names],
        "mean_mutual_information": [0.01, 0.03, 0.02, 0.005],
        "foreground_voxels": [10.0, 12.0, 9.0, 11.0],
    })  # fmt: skip


def test_spearman_in_the_title_equals_scipys():
    cases = cases_table()
    per_case, correlations = report.uncertainty_against_dice(cases, scores_table(cases))
    dice = per_case.set_index("case")["mean_foreground_dice"]
    assert dice["a"] == pytest.approx(0.6) and dice["t"] == pytest.approx(0.7)
    expected = stats.spearmanr([0.2, 0.9, 0.4, 0.1], dice[["a", "b", "c", "t"]])
    row = correlations.set_index("score").loc["mean_normalised_entropy"]
    assert row["spearman_rho"] == pytest.approx(expected.statistic)
    assert row["p_value"] == pytest.approx(expected.pvalue)
    fig = report.uncertainty_figure(per_case, correlations)
    title = fig.axes[0].get_title()
    printed = float(re.search(r"ρ = (-?[0-9.]+)", title).group(1))
    assert printed == pytest.approx(round(expected.statistic, 3), abs=1e-12)
    assert "n = 4" in title


def test_predicted_dice_is_correlated_as_an_agreement_score():
    cases = cases_table()
    scores = scores_table(cases).assign(predicted_dice_foreground=[0.5, 0.95, 0.7, 0.4])  # a, b, c, t
    per_case, correlations = report.uncertainty_against_dice(cases, scores)
    dice = per_case.set_index("case")["mean_foreground_dice"]
    row = correlations.set_index("score").loc["predicted_dice_foreground"]
    expected = stats.spearmanr([0.5, 0.95, 0.7, 0.4], dice[["a", "b", "c", "t"]])
    assert row["spearman_rho"] == pytest.approx(expected.statistic) and row["cases"] == 4
    assert len(report.uncertainty_figure(per_case, correlations).axes) == len(correlations) == 3


def test_empty_predictions_are_left_out_of_the_correlation():
    cases = cases_table()
    scores = scores_table(cases)
    scores.loc[scores["case"] == "b", "foreground_voxels"] = 0.0
    per_case, correlations = report.uncertainty_against_dice(cases, scores)
    assert per_case.set_index("case").loc["b", "empty_prediction"]
    row = correlations.set_index("score").loc["mean_normalised_entropy"]
    assert row["cases"] == 3
    dice = per_case.set_index("case")["mean_foreground_dice"]
    expected = stats.spearmanr([0.2, 0.4, 0.1], dice[["a", "c", "t"]])
    assert row["spearman_rho"] == pytest.approx(expected.statistic)


def test_spearman_is_na_when_undefined_and_missing_scores_are_named():
    assert np.isnan(report.spearman([1.0, 2.0], [3.0, 4.0])[0])
    assert np.isnan(report.spearman([1.0, 1.0, 1.0], [3.0, 4.0, 5.0])[0])
    assert report.spearman_text(float("nan"), float("nan"), 2) == "Spearman ρ n/a (n = 2)"
    cases = cases_table()
    with pytest.raises(ValueError, match="evaluated case.*t"):
        report.uncertainty_against_dice(cases, scores_table(cases).query("case != 't'"))


def test_boxplots_and_training_curves_are_byte_identical_and_without_software_text():
    cases = cases_table()
    first, second = (report.png_bytes(report.metrics_boxplots(cases)) for _ in range(2))
    assert first == second and first.startswith(b"\x89PNG")
    assert b"matplotlib" not in first.lower()
    fig = report.metrics_boxplots(cases)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["dice", "iou", "f1"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["organ", "lobe"]
    curves = {
        k: pd.DataFrame({"epoch": [1, 2, 3], "iterations": [4, 8, 12], "seconds": [1.0, 2.0, 3.0],
                         "train_loss": [2.0, 1.5, 1.2 + k], "lr": [1e-2, 5e-3, 1e-4],
                         "val_dice_1": [0.1, 0.5, 0.7], "val_dice_2": [0.0, 0.2, 0.4]})
        for k in range(3)
    }  # fmt: skip
    fig = report.training_curves_figure(curves, {1: "organ", 2: "lobe"})
    loss_ax, dice_ax, lr_ax = fig.axes
    assert len(loss_ax.get_lines()) == 3 and len(dice_ax.get_lines()) == 6
    assert [t.get_text() for t in dice_ax.get_legend().get_texts()] == ["organ", "lobe"]
    np.testing.assert_allclose(loss_ax.get_lines()[2].get_ydata(), [2.0, 1.5, 3.2])
    assert lr_ax.get_yscale() == "log"
    again = report.training_curves_figure(curves, {1: "organ", 2: "lobe"})
    assert report.png_bytes(fig) == report.png_bytes(again)


def test_configuration_yaml_round_trips_and_page_shows_the_plans(tmp_path):
    config = {
        "labels": {"1": "organ"},
        "folds": 3,
        "train": {"epochs": None},
        "predict": {"mirror_axes": (0, 2)},
    }
    (tmp_path / "plans.json").write_text(json.dumps({"patch_size": [10, 28, 28], "modality": "MR"}))
    report.write_configuration(config, tmp_path / "plans.json", tmp_path / "c.yaml", tmp_path / "c.html")
    text = (tmp_path / "c.yaml").read_text()
    assert "\n  1: organ\n" in text
    assert yaml.safe_load(text) == {**config, "labels": {1: "organ"}, "predict": {"mirror_axes": [0, 2]}}
    page = (tmp_path / "c.html").read_text()
    assert "patch_size" in page and "folds: 3" in page


# The preview


def box_volume(shape=(8, 20, 16)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(100.0, 10.0, shape).astype(np.float32)
    reference = np.zeros(shape, np.uint8)
    reference[2:6, 5:12, 4:10] = 1
    prediction = np.zeros(shape, np.uint8)
    prediction[3:6, 6:13, 4:11] = 2
    return image, reference, prediction


def test_boundary_segments_follow_the_voxel_edges():
    mask = np.zeros((6, 9), bool)
    mask[2:5, 3:8] = True  # rows 2..4, cols 3..7
    segments = preview.boundary_segments(mask)
    assert len(segments) == 2 * (3 + 5)  # the perimeter in voxel edges
    xs, ys = segments[..., 0], segments[..., 1]
    assert xs.min() == 2.5 and xs.max() == 7.5 and ys.min() == 1.5 and ys.max() == 4.5
    on_border = np.isin(xs, [2.5, 7.5]).all(axis=1) | np.isin(ys, [1.5, 4.5]).all(axis=1)
    assert on_border.all()
    np.testing.assert_allclose(np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1), 1.0)
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True  # touching the border: its edges there are drawn too
    assert {tuple(map(tuple, s)) for s in preview.boundary_segments(corner)} == {
        ((0.5, -0.5), (0.5, 0.5)), ((-0.5, -0.5), (-0.5, 0.5)),
        ((-0.5, 0.5), (0.5, 0.5)), ((-0.5, -0.5), (0.5, -0.5)),
    }  # fmt: skip
    assert preview.boundary_segments(np.zeros((4, 4), bool)).shape == (0, 2, 2)


def test_preview_panels_have_the_physical_aspect_and_outlines_on_the_boundaries():
    image, reference, prediction = box_volume()
    fig = preview.preview_figure(image, SPACING, reference, prediction, title="c1 (cv)")
    axial, coronal, sagittal = fig.axes[:3]
    assert axial.get_aspect() == pytest.approx(0.8 / 1.1)
    assert coronal.get_aspect() == pytest.approx(2.5 / 1.1)
    assert sagittal.get_aspect() == pytest.approx(2.5 / 0.8)
    centre = preview.foreground_centre(image.shape, [reference, prediction], SPACING)
    assert reference[centre] or prediction[centre]
    for ax, plane in zip((axial, coronal, sagittal), preview.PLANES, strict=True):
        drawn = {
            c.get_colors()[0][:3].round(3).tobytes(): c.get_segments()
            for c in ax.collections
            if isinstance(c, LineCollection)
        }
        for labels, colour in (
            (reference, preview.REFERENCE_COLOUR),
            (prediction, preview.PREDICTION_COLOUR),
        ):
            key = np.asarray(to_rgb(colour)).round(3).tobytes()
            expected = preview.boundary_segments(np.take(labels, centre[plane.axis], axis=plane.axis))
            assert len(expected) > 0
            got = {tuple(np.round(s, 6).ravel()) for s in drawn[key]}
            assert got == {tuple(np.round(s, 6).ravel()) for s in expected}, plane.name


def test_preview_handles_empty_and_missing_masks():
    image, reference, _ = box_volume()
    empty = np.zeros_like(reference)
    assert preview.foreground_centre(image.shape, [empty, None]) == (4, 10, 8)
    fig = preview.preview_figure(image, SPACING, None, empty)
    for ax in fig.axes[:3]:
        assert all(len(c.get_segments()) == 0 for c in ax.collections if isinstance(c, LineCollection))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["prediction"]
    assert report.png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="prediction shape"):
        preview.preview_figure(image, SPACING, reference, empty[:-1])


def test_display_window_is_robust():
    image = np.zeros((10, 10, 10))
    image[0, 0, 0] = 1e6  # one hot voxel does not wash the picture out
    image[5:, :, :] = 100.0
    assert preview.display_window(image) == (0.0, 100.0)
    assert preview.display_window(np.full((3, 3, 3), 7.0)) == (7.0, 8.0)
    assert preview.display_window(np.full((3, 3, 3), np.nan)) == (0.0, 1.0)


def test_foreground_centre_picks_the_largest_part_and_lands_in_it():
    mask = np.zeros((9, 30, 30), bool)
    mask[2:7, 2:20, 2:20] = True
    mask[2:7, 8:14, 8:14] = False  # a hole around the centroid
    mask[4, 27, 27] = True  # a speck far away
    centre = preview.foreground_centre(mask.shape, [mask], (3.0, 1.0, 1.0))
    assert mask[centre] and centre[0] == 4 and 2 <= centre[1] < 20


def test_orient_lps_turns_flipped_and_permuted_axes():
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    # array axis 0 runs towards the patient's right (-x), 1 towards inferior (-z), 2 towards posterior (+y)
    direction = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    geometry = Geometry((2.0, 3.0, 0.5), (10.0, -4.0, 7.0), direction)
    oriented, spacing = preview.orient_lps(array, geometry)
    assert spacing == pytest.approx((3.0, 0.5, 2.0))  # (S, P, L)
    expected = np.flip(np.transpose(array, (1, 2, 0)), axis=(0, 2))  # to (S, P, L), flipping -z and -x
    np.testing.assert_array_equal(oriented, expected)


def test_decimate_for_display_bounds_the_triangles():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=10.0)
    vertices, faces = preview.decimate_for_display(sphere.vertices, sphere.faces, 500)
    assert 100 < len(faces) <= 500 and faces.max() < len(vertices)
    radii = np.linalg.norm(vertices, axis=1)
    assert radii.max() <= 10.0 + 1e-9 and radii.min() > 8.0
    same_v, same_f = preview.decimate_for_display(sphere.vertices, sphere.faces, 10**6)
    assert len(same_f) == len(sphere.faces)


def write_case(tmp_path, geometry):
    image, reference, prediction = box_volume()
    write_image(tmp_path / "image.nii.gz", image, geometry)
    write_image(tmp_path / "label.nii.gz", reference, geometry)
    write_image(tmp_path / "pred.nii.gz", prediction, geometry)
    export_label_meshes(prediction, geometry, {1: "organ", 2: "lobe"}, tmp_path / "meshes")
    return tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", tmp_path / "pred.nii.gz", tmp_path / "meshes"


def test_write_preview_is_byte_identical_and_checks_grids(tmp_path, oblique_geometry):
    image, label, pred, meshes = write_case(tmp_path, oblique_geometry)
    names = {1: "organ", 2: "lobe"}
    # the prediction has no organ: only the lobe has a mesh
    assert [m.name for m in preview.read_meshes(meshes, names)] == ["lobe"]
    preview.write_preview("c1", "cv", image, label, pred, meshes, names, tmp_path / "a.png")
    preview.write_preview("c1", "cv", image, None, pred, meshes, names, tmp_path / "b.png")
    preview.write_preview("c1", "cv", image, label, pred, meshes, names, tmp_path / "c.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "c.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    write_image(tmp_path / "other.nii.gz", np.zeros((8, 20, 15), np.uint8), oblique_geometry)
    with pytest.raises(ValueError, match="case 'c1': prediction .*other.nii.gz is not on the grid"):
        other = tmp_path / "other.nii.gz"
        preview.write_preview("c1", "cv", image, label, other, meshes, names, tmp_path / "d.png")


def test_read_meshes_takes_one_file_per_mesh_whatever_the_formats(tmp_path, oblique_geometry):
    import shutil

    _, _, _, meshes = write_case(tmp_path, oblique_geometry)
    shutil.copy(meshes / "lobe.stl", meshes / "lobe.ply")  # a second format of the same mesh
    (meshes / "uncertainty").mkdir(exist_ok=True)
    found = preview.read_meshes(meshes, {1: "organ", 2: "lobe"})
    assert [m.name for m in found] == ["lobe"]


def test_training_summary_states_each_jobs_method_cost_and_both_dice(tmp_path) -> None:
    from carve.evaluation.report import write_training_summary

    supervised = {"train_cases": ["a", "b"], "train": {"iterations": 40}, "runtime": {"precision": "bf16"},
                  "val_dice": [0.8, 0.6]}  # fmt: skip
    teacher = {**supervised, "val_dice": [0.9, float("nan")]}
    teacher["semi_supervised"] = {"method": "mean_teacher", "unlabelled_cases": ["u2", "u1"],
                                  "student_val_dice": [0.7, 0.5]}  # fmt: skip
    student = {**supervised, "semi_supervised": {"method": "self_training", "unlabelled_cases": ["u3"]}}
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    (pseudo / "pseudo_labels.tsv").write_text("case\tkept_fraction\nu3\t0.6\nu4\t0.8\n")
    stages = []
    for i, (config, folder) in enumerate(((supervised, None), (teacher, None), (student, pseudo))):
        (tmp_path / f"config_{i}.json").write_text(json.dumps(config))
        (tmp_path / f"bench_{i}.tsv").write_text(f"s\th:m:s\tcpu_time\n{60 * (i + 1)}\t0:01:00\t{90 * (i + 1)}\n")
        stages.append({"stage": "final", "fold": i, "config": tmp_path / f"config_{i}.json",
                       "benchmark": tmp_path / f"bench_{i}.tsv", "pseudo_labels": folder})  # fmt: skip
    table = write_training_summary(stages, tmp_path / "t.tsv", tmp_path / "t.html")
    assert table["method"].tolist() == ["supervised", "mean_teacher", "self_training"]
    assert table["unlabelled_images"].tolist() == [0, 2, 1] and table["labelled_cases"].tolist() == [2, 2, 2]
    np.testing.assert_allclose(table["wall_min"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(table["cpu_min"], [1.5, 3.0, 4.5])
    np.testing.assert_allclose(table["val_dice"], [0.7, 0.9, 0.7])  # NaN (a label absent) left out of the mean
    assert np.isnan(table["student_val_dice"][0]) and table["student_val_dice"][1] == pytest.approx(0.6)
    assert np.isnan(table["pseudo_kept"][0]) and table["pseudo_kept"][2] == pytest.approx(0.7)
    page = (tmp_path / "t.html").read_text()
    assert "Unlabelled images: u1, u2, u3" in page and "6.0 min wall clock, 9.0 CPU min" in page
    assert (tmp_path / "t.tsv").read_text().splitlines()[0].split("\t")[:3] == ["stage", "fold", "method"]
