"""What ships, on real data carve did not write: the Snakefile with its default settings on hippocampus10.

Only the budget differs from the defaults (3 folds of 150 iterations instead of 5 folds of 5 minutes: a few
minutes on 2 cores), and the Dice is scored by this test from the *written* cross-validation predictions against
the labels. The bundle of that run then segments one unseen real scan stored three ways (the original RAS-stored
NIfTI, a NIfTI with permuted and flipped axes written by nibabel, and an LPS-sorted DICOM series written by
SimpleITK): the labels must agree in patient space.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from conftest import run_snakemake

pytestmark = pytest.mark.realdata

LABELS = {1: "anterior", 2: "posterior"}
# The keys this test sets beyond what a user must (cases, results, labels, modality): the budget only.
BUDGET = {"folds": 3, "train": {"epochs": 3, "iterations_per_epoch": 50, "time_budget_min": None}}
DICE_FLOOR = 0.6  # default settings gave 0.15 with test-time flips that training never saw
UNSEEN = "hippocampus_034"  # an unlabelled scan (uint8, so its DICOM copy holds the same values)


@pytest.fixture(scope="module")
def hippocampus_run(shared_data: Path, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("hippocampus_run")
    source = shared_data / "hippocampus10"
    images = sorted((source / "imagesTr").glob("*.nii.gz"))
    rows = [
        {"case": p.name.removesuffix(".nii.gz"), "image": str(p), "label": str(source / "labelsTr" / p.name)}
        for p in images
    ]
    assert len(rows) == 10
    pd.DataFrame(rows).assign(role="train").to_csv(work / "cases.tsv", sep="\t", index=False)
    config = {"cases": "cases.tsv", "results": "results/hippocampus", "labels": LABELS, "modality": "MR", **BUDGET}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    run = run_snakemake(work, "--cores", "2", configs=(work / "config.yaml",))
    assert run.returncode == 0, run.stderr[-5000:]
    return work / "results" / "hippocampus"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def test_default_pipeline_cross_validation_dice_on_real_hippocampus(hippocampus_run: Path, shared_data: Path) -> None:
    plans = yaml.safe_load((hippocampus_run / "plans.json").read_text())
    assert plans["mirror_axes"] == []  # the default: no flips in training, so none at test time
    scores = {}
    for cv in sorted((hippocampus_run / "cv").glob("*.nii.gz")):
        case = cv.name.removesuffix(".nii.gz")
        predicted = nib.load(cv)
        reference = nib.load(shared_data / "hippocampus10" / "labelsTr" / cv.name)
        np.testing.assert_allclose(predicted.affine, reference.affine, atol=1e-4)  # the case's own grid
        p, r = np.asarray(predicted.dataobj), np.asarray(reference.dataobj)
        scores[case] = {name: dice(p == v, r == v) for v, name in LABELS.items()}
    assert len(scores) == 10
    table = pd.DataFrame(scores).T
    mean = float(table.to_numpy().mean())
    print(f"cross-validation Dice from the written cv/ predictions: {table.mean().round(3).to_dict()}, mean {mean:.3f}")
    assert mean >= DICE_FLOOR, table
    # the pipeline's own summary says the same
    cases = pd.read_csv(hippocampus_run / "metrics" / "cases.tsv", sep="\t")
    ours = cases[cases["label"].isin(LABELS.values())].groupby("label")["dice"].mean()
    for name in LABELS.values():
        assert ours[name] == pytest.approx(table[name].mean(), abs=1e-6)


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """An MR series as a scanner sorts it (LPS: rows towards posterior, columns towards left, slices towards
    superior), written by SimpleITK/GDCM (not by carve)."""
    image = sitk.Cast(sitk.DICOMOrient(image, "LPS"), sitk.sitkInt16)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.8.498.11"
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.10",
            "0020|000e": series,
            "0020|0052": "1.2.826.0.1.3680043.8.498.12",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3])),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0008|103e": "T1 hippocampus crop",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(slice_)


def permuted_flipped_nifti(source: Path, out: Path) -> None:
    """The same voxels stored with axes (k, i, j) and i, k reversed: nibabel's affine arithmetic, not carve's."""
    image = nib.load(source)
    data = np.asarray(image.dataobj)
    shape = data.shape
    # new index (a, b, c) holds old voxel (i, j, k) = (n_i - 1 - b, c, n_k - 1 - a)
    new = np.transpose(data, (2, 0, 1))[::-1, ::-1, :]
    to_old = np.array(
        [[0, -1, 0, shape[0] - 1], [0, 0, 1, 0], [-1, 0, 0, shape[2] - 1], [0, 0, 0, 1]], dtype=float
    )  # fmt: skip
    nib.save(nib.Nifti1Image(np.ascontiguousarray(new), image.affine @ to_old), out)


def test_nifti_trained_bundle_segments_dicom_and_reordered_copies_alike(
    hippocampus_run: Path, shared_data: Path
) -> None:
    source = shared_data / "hippocampus-unlabelled" / "imagesTr" / f"{UNSEEN}.nii.gz"
    work = hippocampus_run.parent.parent / "orientation"
    scans = work / "scans"
    scans.mkdir(parents=True)
    shutil.copyfile(source, scans / "as_stored.nii.gz")
    permuted_flipped_nifti(source, scans / "permuted_flipped.nii.gz")
    write_dicom_series(sitk.ReadImage(str(source)), scans / "dicom_lps")
    config = {"bundle": str(hippocampus_run / "bundle"), "cases": "scans", "results": "results/orientation"}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    run = run_snakemake(work, "--cores", "2", configs=(work / "config.yaml",))
    assert run.returncode == 0, run.stderr[-5000:]
    results = work / "results" / "orientation"
    reference = sitk.ReadImage(str(source))
    labels = {}
    for case in ("as_stored", "permuted_flipped", "dicom_lps"):
        predicted = sitk.ReadImage(str(results / "predictions" / f"{case}.nii.gz"))
        moved = sitk.Resample(predicted, reference, sitk.Transform(), sitk.sitkNearestNeighbor)  # by ITK, in space
        labels[case] = sitk.GetArrayFromImage(moved)
    volumes = {c: {n: int((a == v).sum()) for v, n in LABELS.items()} for c, a in labels.items()}
    print(f"{UNSEEN}: predicted voxels (1 mm^3) per storage {volumes}")
    assert min(volumes["as_stored"].values()) > 100
    for case in ("permuted_flipped", "dicom_lps"):
        for v, name in LABELS.items():
            assert dice(labels[case] == v, labels["as_stored"] == v) >= 0.99, (case, name, volumes)
    assert (results / "dicom" / "dicom_lps" / "segmentation.seg.dcm").is_file()
