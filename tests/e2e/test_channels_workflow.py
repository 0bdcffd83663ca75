"""Several channels from DICOM study folders, and the sheet's per-row series choice, through the Snakefile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from carve.export.dicom_write import write_dicom_series
from carve.imaging.io import Geometry, read_channels, read_image, write_image

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
AXES = ((-1, 0, 0), (0, 1, 0), (0, 0, 1))


def snakemake(workdir: Path, config: dict, *targets: str) -> subprocess.CompletedProcess:
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({"cases": "x", "labels": {1: "a"}}))
    (workdir / "my.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "my.yaml"), "--cores", "1", *targets]  # fmt: skip
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir)


def test_study_folders_become_two_channel_images(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    volumes = {}
    for i, case in enumerate(("p1", "p2", "p3")):
        g = Geometry((3.0, 1.0, 1.0), (9.0, 0.0, 10.0 * i), AXES)
        t1 = rng.integers(0, 500, size=(4, 8, 8)).astype(np.int16)
        flair = rng.integers(500, 900, size=(4, 8, 8)).astype(np.int16)
        write_dicom_series(t1, g, tmp_path / case / "s1", series_description="t1_mprage", uid_seed=f"{case}t1")
        write_dicom_series(flair, g, tmp_path / case / "s2", series_description="FLAIR ax", uid_seed=f"{case}fl")
        write_image(tmp_path / f"{case}_lab.nii.gz", (t1 > 250).astype(np.uint8), g)
        volumes[case] = (t1, flair)
        rows.append(f"{case}\t{case}\t{case}_lab.nii.gz\ttrain\t")
    # case p3 names its T1 series by UID in the sheet (here: the FLAIR's, to see that the sheet wins)
    flair_uid = pydicom.dcmread(next((tmp_path / "p3" / "s2").glob("*.dcm"))).SeriesInstanceUID
    rows[2] = rows[2] + flair_uid
    (tmp_path / "cases.tsv").write_text("case\timage\tlabel\trole\tseries_T1\n" + "\n".join(rows) + "\n")
    config = {
        "cases": str(tmp_path / "cases.tsv"),
        "results": "out",
        "labels": {1: "a"},
        "folds": 3,
        "channels": [{"name": "T1", "series_description": "(?i)t1"}, {"name": "FLAIR", "series_description": "FLAIR"}],
    }
    targets = [f"out/nifti/{c}/image.nii.gz" for c in ("p1", "p2", "p3")] + ["out/nifti/p1/label.nii.gz"]
    out = snakemake(tmp_path, config, *targets)
    assert out.returncode == 0, out.stdout[-3000:]
    for case in ("p1", "p2"):
        data, _ = read_channels(tmp_path / "out" / "nifti" / case / "image.nii.gz")
        np.testing.assert_array_equal(data, np.stack(volumes[case]))
    p3, _ = read_channels(tmp_path / "out" / "nifti" / "p3" / "image.nii.gz")
    np.testing.assert_array_equal(p3[0], volumes["p3"][1])
    label, _ = read_image(tmp_path / "out" / "nifti" / "p1" / "label.nii.gz")
    np.testing.assert_array_equal(label, volumes["p1"][0] > 250)
    log = (tmp_path / "out" / "logs" / "convert_image" / "p1.log").read_text()
    assert "channel 'T1'" in log and "channel 'FLAIR'" in log and "by description" in log
