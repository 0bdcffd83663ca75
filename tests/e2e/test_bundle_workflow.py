"""Inference only: the tiny run's bundle segments a folder of new scans without training or labels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from conftest import job_stats, run_snakemake

from carve.imaging.io import read_image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def inference(tiny_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("inference")
    scans = workdir / "scans"
    scans.mkdir()
    for source, name in (("demo_004", "new_a"), ("demo_005", "new_b")):
        shutil.copy(tiny_run / "results" / "e2e" / "nifti" / source / "image.nii.gz", scans / f"{name}.nii.gz")
    bundle = tiny_run / "results" / "e2e" / "bundle"
    config = {"cases": "scans", "bundle": str(bundle), "results": "out", "device": "cpu", "threads": 1}
    (workdir / "infer.yaml").write_text(yaml.safe_dump(config))
    done = run_snakemake(workdir, "--cores", "2", configs=(workdir / "infer.yaml",))
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, done


def test_only_inference_jobs_run(inference):
    _, done = inference
    jobs = job_stats(done.stdout + done.stderr)
    assert jobs.get("predict") == 2 and jobs.get("export_mesh") == 2 and jobs.get("convert_image") == 2
    assert not {"plan", "train_fold", "preprocess", "split", "convert_label", "evaluate"} & set(jobs)


def test_bundle_predictions_equal_the_trained_runs(inference, tiny_run):
    workdir, _ = inference
    for source, name in (("demo_004", "new_a"), ("demo_005", "new_b")):
        for folder in ("predictions", "uncertainty"):
            ours = read_image(workdir / "out" / folder / f"{name}.nii.gz")[0]
            theirs = read_image(tiny_run / "results" / "e2e" / folder / f"{source}.nii.gz")[0]
            np.testing.assert_array_equal(ours, theirs)
        meshes = sorted(p.name for p in (workdir / "out" / "meshes" / name).iterdir() if p.suffix == ".stl")
        assert meshes == sorted(p.name for p in (tiny_run / "results" / "e2e" / "meshes" / source).glob("*.stl"))
    manifest = (workdir / "out" / "manifest.json").read_text()
    assert "bundle.json" in manifest and "fold_0.pt" in manifest


def test_damaged_bundle_and_training_rows_are_refused(tiny_run, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_run / "results" / "e2e" / "bundle", bundle)
    (bundle / "folds" / "fold_1.pt").unlink()
    (tmp_path / "scans").mkdir()
    shutil.copy(tiny_run / "results" / "e2e" / "nifti" / "demo_004" / "image.nii.gz", tmp_path / "scans" / "a.nii.gz")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"cases": "scans", "bundle": str(bundle), "results": "out"}))
    out = run_snakemake(tmp_path, "--dry-run", configs=(config,))
    assert out.returncode != 0 and "folds/fold_1.pt is missing (2 fold(s) listed)" in out.stdout + out.stderr
    shutil.copy(tiny_run / "results" / "e2e" / "bundle" / "folds" / "fold_1.pt", bundle / "folds" / "fold_1.pt")
    (tmp_path / "cases.tsv").write_text("case\timage\tlabel\trole\na\tscans/a.nii.gz\tscans/a.nii.gz\ttrain\n")
    config.write_text(yaml.safe_dump({"cases": "cases.tsv", "bundle": str(bundle), "results": "out"}))
    out = run_snakemake(tmp_path, "--dry-run", configs=(config,))
    assert out.returncode != 0 and "with a bundle every case is predicted; role 'train' on a" in out.stdout + out.stderr


def test_carve_predict_segments_a_dicom_series_with_the_bundle(tiny_run, tmp_path):
    """`carve predict` for real (not a dry run): one DICOM series in, labels equal to the trained run's prediction of
    the same scan, uncertainty, meshes and a DICOM-SEG out; then `carve verify` on what it wrote."""
    import subprocess
    import sys

    results = tiny_run / "results" / "e2e"
    series = results / "data" / "dicom" / "demo_004"
    out = tmp_path / "out"
    predict = [sys.executable, "-m", "carve.pipeline.cli", "predict", "-b", str(results / "bundle"), "-i", str(series)]
    done = subprocess.run([*predict, "-o", str(out), "--cores", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    labels, geometry = read_image(out / "predictions" / "demo_004.nii.gz")
    trained, trained_geometry = read_image(results / "predictions" / "demo_004.nii.gz")
    np.testing.assert_array_equal(labels, trained)
    assert geometry.is_close(trained_geometry, 1e-4, labels.shape)
    assert (out / "uncertainty" / "demo_004.nii.gz").is_file() and any((out / "meshes" / "demo_004").glob("*.stl"))
    assert (out / "dicom" / "demo_004" / "segmentation.seg.dcm").is_file()
    verify = subprocess.run([sys.executable, "-m", "carve.pipeline.cli", "verify", str(out / "manifest.json")],
                            capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
