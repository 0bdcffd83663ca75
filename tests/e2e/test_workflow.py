"""End-to-end: lint, dry-run and run the Snakefile on a tiny generated dataset, then check the outputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import trimesh
from conftest import assert_dciodvfy_clean

from carve.imaging.io import read_image

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "e2e" / "config.yaml"
pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str, config: Path = CONFIG) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    fresh = tmp_path_factory.mktemp("e2e_dry")
    shutil.copytree(REPO / "config", fresh / "config")
    dry = snakemake(fresh, "--dry-run", "--cores", "2")
    assert dry.returncode == 0, dry.stderr[-3000:]
    return tiny_run, dry, None


def test_lint_is_clean(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    lint = snakemake(tmp_path, "--lint")
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    assert "Lints for rule" not in lint.stdout + lint.stderr


def test_dry_run_plans_every_rule(run):
    _, dry, _ = run
    text = dry.stdout + dry.stderr
    rules = ["generate_demo", "convert_image", "convert_label", "plan", "split", "preprocess", "train_fold"]
    rules += ["predict", "predict_cv", "evaluate", "summarise_metrics", "export_mesh", "export_dicom_seg"]
    for rule in rules:
        assert rule in text, f"rule {rule} missing from the dry run"


def test_output_layout_and_geometry(run):
    workdir, _, _ = run
    r = workdir / "results" / "e2e"
    sheet = pd.read_csv(r / "data" / "cases.tsv", sep="\t")
    assert (r / "plans.json").is_file() and (r / "splits.json").is_file()
    for k in range(2):
        assert (r / "models" / f"fold_{k}" / "model.pt").is_file()
        assert (r / "models" / f"fold_{k}" / "config.json").is_file()
    for case, role in zip(sheet["case"], sheet["role"], strict=True):
        image, g_image = read_image(r / "nifti" / case / "image.nii.gz")
        pred_path = r / ("cv" if role == "train" else "predictions") / f"{case}.nii.gz"
        pred, g_pred = read_image(pred_path)
        assert pred.shape == image.shape
        assert g_pred.is_close(g_image, 1e-4, image.shape)
        assert set(np.unique(pred)) <= {0, 1, 2}
        unc, g_unc = read_image(r / "uncertainty" / f"{case}.nii.gz")
        assert unc.shape == image.shape and g_unc.is_close(g_image, 1e-4, image.shape)
        assert 0.0 <= unc.min() and unc.max() <= 1.0


def test_meshes_are_watertight_and_in_world_coordinates(run):
    workdir, _, _ = run
    r = workdir / "results" / "e2e"
    stls = sorted((r / "meshes").glob("*/*.stl"))
    assert stls, "no STL written"
    for stl in stls:
        mesh = trimesh.load(stl, force="mesh")
        assert mesh.is_watertight, stl
        assert mesh.volume > 0
        labels, geometry = (
            read_image(r / "predictions" / f"{stl.parent.name}.nii.gz")
            if (r / "predictions" / f"{stl.parent.name}.nii.gz").exists()
            else read_image(r / "cv" / f"{stl.parent.name}.nii.gz")
        )
        value = {"organ": 1, "lobe": 2}[stl.stem]
        voxels = np.argwhere(labels == value)
        # every vertex lies within the world box of the label's voxels (their outer faces), plus smoothing slack
        corners = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
        world = geometry.index_to_world((voxels[:, None, :] + corners[None]).reshape(-1, 3))
        diagonal = float(np.linalg.norm(geometry.spacing_mm))
        assert (mesh.bounds[0] >= world.min(axis=0) - 0.5 * diagonal).all(), stl
        assert (mesh.bounds[1] <= world.max(axis=0) + 0.5 * diagonal).all(), stl
        # and its centre of mass is that of the voxels to within 1.5 voxels: the tiny run predicts speckle, whose
        # small fragments shrink under smoothing and weigh less in the mesh than in the voxel count
        centroid = geometry.index_to_world(voxels.mean(axis=0)[None])[0]
        assert np.linalg.norm(mesh.center_mass - centroid) < 1.5 * diagonal, stl
    for case_dir in (r / "meshes").iterdir():
        table = pd.read_csv(case_dir / "meshes.tsv", sep="\t")
        assert set(table["label"]) == {"organ", "lobe"}
        # mesh quality and uncertainty colours (config: format [stl, glb], uncertainty_colour on by default)
        table["file"] = table["file"].fillna("")
        for _, row in table.iterrows():
            if not row["file"]:
                assert "absent" in row["note"] and not list(case_dir.glob(f"{row['label']}.*")), case_dir
                continue
            assert row["file"] == f"{row['label']}.stl;{row['label']}.glb"
            assert row["watertight"] and row["edge_manifold"] and row["printable"], (case_dir, row["label"])
            assert 0.0 <= row["hd95_mm"] <= row["hausdorff_mm"] and 0.0 <= row["uncertainty_mean"] <= 1.0
            assert (case_dir / f"{row['label']}.glb").is_file()
            stl = trimesh.load(case_dir / f"{row['label']}.stl", force="mesh")
            ply = trimesh.load(case_dir / "uncertainty" / f"{row['label']}.ply", process=False)
            assert len(ply.vertices) == len(stl.vertices) and ply.visual.kind == "vertex"
            values = ply.metadata["_ply_raw"]["vertex"]["data"]["uncertainty"]
            assert 0.0 <= values.min() and values.max() <= 1.0
            assert (case_dir / "uncertainty" / f"{row['label']}.glb").is_file()


def test_metrics_are_sane(run):
    workdir, _, _ = run
    r = workdir / "results" / "e2e"
    cases = pd.read_csv(r / "metrics" / "cases.tsv", sep="\t")
    summary = pd.read_csv(r / "metrics" / "summary.tsv", sep="\t")
    assert set(cases["set"]) == {"cv", "test"}
    assert len(cases) == 6 * 2  # 4 cv + 2 labelled test cases, 2 labels each
    assert cases["dice"].between(0, 1).all() and cases["iou"].between(0, 1).all()
    np.testing.assert_allclose(cases["iou"], cases["dice"] / (2 - cases["dice"]), atol=1e-6)
    assert {"cv", "test"} <= set(summary["set"])
    assert "mean_foreground" in set(summary["label"])


def test_logs_and_benchmarks_written(run):
    workdir, _, _ = run
    r = workdir / "results" / "e2e"
    assert list((r / "logs" / "train_fold").glob("*.log"))
    assert list((r / "benchmarks" / "predict").glob("*.tsv"))


def test_rerun_has_nothing_to_do(run):
    workdir, _, _ = run
    again = snakemake(workdir, "--dry-run", "--cores", "2")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_dicom_seg_round_trips_to_the_prediction(run):
    from carve.imaging.dicom_labels import read_label_object

    workdir, _, _ = run
    r = workdir / "results" / "e2e"
    for case in ("demo_004", "demo_005"):
        prediction, geometry = read_image(r / "predictions" / f"{case}.nii.gz")
        seg = r / "dicom" / case / "segmentation.seg.dcm"
        back = read_label_object(seg, prediction.shape, geometry, {1: "organ", 2: "lobe"})
        np.testing.assert_array_equal(back, prediction)
        assert_dciodvfy_clean(seg, "SEG")  # what the pipeline writes is valid DICOM, not only readable by carve


def test_no_patient_identifier_in_outputs_logs_or_names(run):
    workdir, _, _ = run
    r = workdir / "results" / "e2e"
    import gzip

    import pydicom

    source = next((r / "data" / "dicom" / "demo_000").iterdir())
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    secrets = [str(ds.PatientName).encode(), str(ds.PatientBirthDate).encode()]
    secrets = [s for s in secrets if len(s) >= 4]
    assert secrets
    checked = 0
    for path in r.rglob("*"):
        rel = path.relative_to(r)
        # the input data and the DICOM outputs carry the patient module by design (DICOM requires it)
        if path.is_dir() or rel.parts[0] in ("data", "dicom"):
            continue
        for secret in secrets:
            assert secret.decode().lower() not in str(rel).lower()
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        for secret in secrets:
            assert secret not in data, f"{secret!r} found in {rel}"
        checked += 1
    assert checked > 50
