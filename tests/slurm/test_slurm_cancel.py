"""scancel of running SLURM jobs, then a rerun: the training fold resumes from its checkpoint and every result
equals an uninterrupted local run to the byte.

Starts from a copy of the shared local run (``tiny_run``) with the outputs of one training fold (and its checkpoint)
and of one case's conversion removed, so that only these two jobs go through SLURM (``profiles/slurm-local``,
``--keep-going``). The conversion is cancelled while its script runs; the fold once its first checkpoint (epoch 1 of
2) is on disk. To hit that moment on a loaded machine, each job's script process is frozen (SIGSTOP) as soon as it is
seen and then cancelled with ``scancel``, which kills it where it stopped. Snakemake must report both jobs as failed
(CANCELLED) and exit non-zero; a plain rerun must complete, the fold's log must show that it resumed from its
checkpoint, and the results must equal the local run's. Needs the test cluster (``bash .ci/slurm.sh start``; skipped
otherwise) and the processes of its jobs on this machine (the one-node cluster is this machine).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, REPRODUCIBLE, digests, job_stats
from test_slurm import CONFIG, PROFILE, _cluster_problem

pytestmark = pytest.mark.e2e
HANG_GUARD_S = 1800  # only so that a wedged cluster cannot hold CI forever; no timing is asserted
FOLD, CASE = 0, "demo_004"  # demo_004 is a test case: its conversion feeds no training
TARGETS = [f"results/e2e/models/fold_{FOLD}/model.pt", f"results/e2e/nifti/{CASE}/image.nii.gz"]


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        pytest.skip(f"no SLURM test cluster ({problem}): start one with `bash .ci/slurm.sh start`")


def _snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(CONFIG), "--workflow-profile", str(PROFILE), *args]  # fmt: skip


def _script_pids(workdir: Path, rule: str) -> list[int]:
    """This run's processes of ``rule``'s script: Snakemake runs <workdir>/.snakemake/scripts/tmpXXXX.<rule>.py."""
    prefix, suffix = str(workdir).encode(), f".{rule}.py".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if any(a.startswith(prefix) and a.endswith(suffix) for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def _jobs(workdir: Path) -> dict[int, tuple[str, str]]:
    """SLURM job id -> (state, comment) of the jobs that run in ``workdir`` (finished ones included)."""
    table = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k|%Z"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    rows = [row.split("|") for row in table.stdout.splitlines() if row.count("|") == 3]
    return {int(i): (state, comment) for i, state, comment, cwd in rows if Path(cwd) == workdir}


def _job_of(workdir: Path, rule: str) -> int:
    """The running SLURM job of ``rule`` (the plugin sets the comment to rule_<rule>[_wildcards_<values>])."""
    jobs = _jobs(workdir)
    found = [i for i, (state, comment) in jobs.items() if state == "RUNNING" and comment.startswith(f"rule_{rule}")]
    assert len(found) == 1, f"expected one running {rule} job, found {found}: {jobs}"
    return found[0]


def _cancel_mid_run(workdir: Path, proc: subprocess.Popen) -> dict[str, int]:
    """Freeze and scancel the conversion once its script runs, and the fold once its first checkpoint is written."""
    checkpoint = workdir / "results" / "e2e" / "models" / f"fold_{FOLD}" / "checkpoint.pt"
    ready = {"convert_image": lambda: True, "train_fold": checkpoint.exists}
    cancelled: dict[str, int] = {}
    deadline = time.monotonic() + HANG_GUARD_S
    while ready:
        assert proc.poll() is None, f"the run ended before these jobs could be cancelled: {sorted(ready)}"
        assert time.monotonic() < deadline, f"no chance to cancel {sorted(ready)} within {HANG_GUARD_S} s"
        for rule in [r for r, is_ready in ready.items() if is_ready()]:
            pids = _script_pids(workdir, rule)
            if not pids:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:  # ended meanwhile; _job_of then finds no running job and says so
                    pass
            job = _job_of(workdir, rule)
            done = subprocess.run(["scancel", str(job)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            cancelled[rule] = job
            del ready[rule]
        time.sleep(0.02)
    return cancelled


def _iteration(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["iteration"])


def test_cancelled_jobs_rerun_to_identical_results(cluster, tiny_run, tiny_run_copy):
    workdir = tiny_run_copy
    results = workdir / "results" / "e2e"
    fold_dir = results / "models" / f"fold_{FOLD}"
    shutil.rmtree(fold_dir)  # the fold's outputs and its checkpoint: it trains from scratch
    (results / "nifti" / CASE / "image.nii.gz").unlink()
    (results / "logs" / "train_fold" / f"fold_{FOLD}.log").unlink()

    with open(workdir / "cancelled_run.log", "w") as out:
        proc = subprocess.Popen(
            _snakemake_cmd(workdir, "--keep-going", *TARGETS),
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            cancelled = _cancel_mid_run(workdir, proc)
            proc.wait(timeout=HANG_GUARD_S)
        finally:  # on a failure, leave no Snakemake, no job and no frozen process behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for job, (state, _) in _jobs(workdir).items():
                if state in ("PENDING", "RUNNING", "SUSPENDED"):
                    subprocess.run(["scancel", str(job)], check=False)
    text = (workdir / "cancelled_run.log").read_text()
    assert proc.returncode != 0, text[-3000:]
    assert job_stats(text) == {"convert_image": 1, "train_fold": 1}, text[-3000:]
    jobs = _jobs(workdir)
    for rule, job in cancelled.items():
        assert jobs[job][0] == "CANCELLED", (rule, job, jobs[job])
        # without sacct the plugin can only report the state it saw in squeue
        assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in text, (rule, text[-3000:])
        (job_log,) = (workdir / ".snakemake" / "slurm_logs").glob(f"rule_{rule}/*/{job}.log")
        assert re.search(rf"\*\*\* JOB {job} ON \S+ CANCELLED AT", job_log.read_text()), job_log.read_text()[-3000:]
        # and SLURM ended the rule's script, frozen until the cancel: no orphan writes into the results later
        assert not _script_pids(workdir, rule), f"the cancelled {rule} script still runs"
    # the cancelled fold stopped between its first checkpoint and its end; nothing of it but the checkpoint is left
    reached = _iteration(fold_dir / "checkpoint.pt")
    total = _iteration(tiny_run / "results" / "e2e" / "models" / f"fold_{FOLD}" / "checkpoint.pt")
    assert 0 < reached < total, f"the fold was cancelled at iteration {reached} of {total}, not between the two"
    assert sorted(p.name for p in fold_dir.iterdir()) == ["checkpoint.pt"]
    assert not (results / "nifti" / CASE / "image.nii.gz").exists()

    rerun = subprocess.run(_snakemake_cmd(workdir, *TARGETS), cwd=workdir, capture_output=True, text=True,
                           timeout=HANG_GUARD_S)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert job_stats(rerun.stdout + rerun.stderr) == {"convert_image": 1, "train_fold": 1}
    log = (results / "logs" / "train_fold" / f"fold_{FOLD}.log").read_text()
    assert re.search(rf"resumed from \S*fold_{FOLD}/checkpoint\.pt at iteration {reached} ", log), log[-3000:]

    reference = digests(tiny_run / "results" / "e2e", REPRODUCIBLE)
    resumed = digests(results, REPRODUCIBLE)
    assert {f"models/fold_{FOLD}/model.pt", f"nifti/{CASE}/image.nii.gz"} <= set(reference)
    assert set(resumed) == set(reference)
    differing = sorted(k for k in reference if reference[k] != resumed[k])
    assert not differing, f"differ from the uninterrupted local run: {differing}"
