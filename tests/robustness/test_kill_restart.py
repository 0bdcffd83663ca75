"""kill -9 at several moments, then a rerun: the results equal an uninterrupted run to the byte.

One run of the tiny configuration from scratch is killed four times, each time at a later moment of its life
(Snakemake's whole process group when a given file appears, or one of its jobs as soon as it runs), and rerun
as a user would (`--unlock`, then `--rerun-incomplete`, as the profiles set); after each kill no half-written
output may be left, and the final rerun's every reproducible output must equal the shared uninterrupted run
(`tiny_run`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import E2E_CONFIG, REPO, digests, run_snakemake

pytestmark = pytest.mark.e2e
HANG_GUARD_S = 1800  # only so that a wedged run cannot hold CI forever; no timing is asserted


def _start(workdir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(E2E_CONFIG), "--cores", "2", "--rerun-incomplete"]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _wait_for(workdir: Path, pattern: str, proc: subprocess.Popen, before: set[Path]) -> Path:
    """The first file matching ``pattern`` that was not there before (``before``: those that were)."""
    results = workdir / "results" / "e2e"
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        found = sorted(set(results.glob(pattern)) - before)
        if found:
            return found[0]
        assert proc.poll() is None, f"the run ended before {pattern} appeared"
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear")


def _wait_for_job(rule: str, proc: subprocess.Popen, workdir: Path) -> list[int]:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if pids := _job_pids(rule, workdir):
            return pids
        assert proc.poll() is None, f"the run ended before a {rule} job started"
        time.sleep(0.02)
    raise AssertionError(f"no {rule} job started")


def _job_pids(rule: str, workdir: Path) -> list[int]:
    """Processes running a job of ``rule`` of the run in ``workdir`` (Snakemake runs scripts as
    <workdir>/.snakemake/scripts/tmpXXXX.<rule>.py); other runs on the machine are left alone."""
    scripts = str(workdir / ".snakemake" / "scripts").encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if any(a.endswith(f".{rule}.py".encode()) and a.startswith(scripts) for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def _assert_complete(results: Path) -> None:
    import json

    import nibabel as nib
    import numpy as np
    import torch

    visible = [p for p in results.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for path in visible:
        if path.name.endswith(".nii.gz"):
            np.asarray(nib.load(str(path)).dataobj)  # a truncated gzip stream raises here
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                [data[k] for k in data.files]
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)


# The moments of one run's life, in order: each kill leaves the state the next rerun starts from, so every
# resumption is exercised once and the final rerun must still equal the uninterrupted run (about one run's time
# instead of one per moment).
KILLS = [
    # kill Snakemake and every job while cases are being converted
    ("snakemake-mid-conversion", "nifti/*/image.nii.gz", None),
    # kill only a training job, as soon as it runs: Snakemake sees it fail and stops; the rerun trains it
    ("job-mid-training", None, "train_fold"),
    # kill Snakemake and the training jobs after a fold's first checkpoint, before its model: the rerun resumes
    ("snakemake-mid-training", "models/fold_*/checkpoint.pt", None),
    # kill Snakemake while predict writes: the uncertainty map is on disk, the labels are not yet
    ("snakemake-mid-prediction", "uncertainty/demo_00[45].nii.gz", None),
]


def _kill(workdir: Path, pattern: str | None, job_rule: str | None) -> int:
    """Start the run (a rerun after the first), kill it at the moment named, return Snakemake's exit status."""
    results = workdir / "results" / "e2e"
    before = set(results.glob(pattern)) if pattern else set()
    proc = _start(workdir)
    try:
        if job_rule is None:
            _wait_for(workdir, pattern, proc, before)
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            for pid in _wait_for_job(job_rule, proc, workdir):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def test_a_run_killed_at_each_moment_reruns_to_identical_results(tiny_run, tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    results = tmp_path / "results" / "e2e"
    for moment, pattern, job_rule in KILLS:
        assert _kill(tmp_path, pattern, job_rule) != 0, moment
        assert not (results / "manifest.json").exists(), f"{moment}: the interrupted run must not have finished"
        # no half-written file is left where an output belongs (writes go to hidden temporaries, then rename)
        _assert_complete(results)
        assert run_snakemake(tmp_path, "--unlock").returncode == 0
    rerun = run_snakemake(tmp_path, "--cores", "2", "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    logs = "".join(p.read_text() for p in (results / "logs" / "train_fold").glob("*.log"))
    assert "resumed from" in logs, "the fold killed after its checkpoint must resume from it"
    reference = digests(tiny_run / "results" / "e2e")
    assert len(reference) > 60
    resumed = digests(results)
    assert set(resumed) == set(reference)
    differing = sorted(k for k in reference if reference[k] != resumed[k])
    assert not differing, f"killed at {[k[0] for k in KILLS]}: differ from the uninterrupted run: {differing}"
