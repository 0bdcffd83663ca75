"""The tiny end-to-end configuration through a real SLURM cluster, compared to the byte with a local run.

Needs a cluster that answers ``sinfo`` with a ``debug`` partition: ``bash .ci/slurm.sh start`` brings up the
one-node test cluster (``.ci/run`` does it in CI); skipped otherwise. Runs the workflow twice (locally, then
with ``--workflow-profile profiles/slurm-local``): a few minutes on 2 cores.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPRODUCIBLE, digests, job_stats

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "e2e" / "config.yaml"
PROFILE = REPO / "profiles" / "slurm-local"
PARTITION = "debug"
HANG_GUARD_S = 3600  # only so that a wedged cluster cannot hold CI forever; no timing is asserted
pytestmark = pytest.mark.e2e


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no `sinfo` on PATH"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%R %a"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 30 s"
    if done.returncode != 0:
        return f"`sinfo` failed: {done.stderr.strip()[:200]}"
    if f"{PARTITION} up" not in done.stdout:
        return f"no partition {PARTITION!r} that is up (sinfo: {done.stdout.strip()[:200]!r})"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        pytest.skip(f"no SLURM test cluster ({problem}): start one with `bash .ci/slurm.sh start`")


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(CONFIG), *args]  # fmt: skip
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"snakemake {' '.join(args)} still running after {HANG_GUARD_S} s: {str(err.stderr)[-3000:]}")


def planned_rules(run: subprocess.CompletedProcess) -> dict[str, int]:
    return job_stats(run.stdout + run.stderr)


@pytest.fixture(scope="module")
def runs(cluster, tiny_run, tmp_path_factory):
    """The shared local run of the tiny configuration, and the same configuration through SLURM."""
    workdir = tmp_path_factory.mktemp("slurm")
    shutil.copytree(REPO / "config", workdir / "config")
    done = snakemake(workdir, "--workflow-profile", str(PROFILE))
    assert done.returncode == 0, f"slurm run failed:\n{done.stderr[-5000:]}"
    return {"local": (tiny_run, None), "slurm": (workdir, done)}


def test_slurm_run_completes(runs):
    workdir, done = runs["slurm"]
    text = done.stdout + done.stderr
    assert "(100%) done" in text
    assert "Using workflow specific profile" in text and str(PROFILE) in text
    assert (workdir / "results" / "e2e" / "manifest.json").is_file()


def test_every_job_but_all_went_through_slurm(runs):
    workdir, done = runs["slurm"]
    expected = planned_rules(done)
    assert expected.pop("all") == 1 and sum(expected.values()) > 30
    # the plugin keeps one log per SLURM job (slurm-keep-successful-logs): rule_<rule>/[<wildcards>/]<jobid>.log
    logs = sorted((workdir / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log"))
    jobs = {int(p.stem): p.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0] for p in logs}
    seen: dict[str, int] = {}
    for rule_dir in jobs.values():
        seen[rule_dir.removeprefix("rule_")] = seen.get(rule_dir.removeprefix("rule_"), 0) + 1
    assert seen == expected
    # and SLURM itself (no accounting: squeue keeps finished jobs for MinJobAge) knows each one as completed
    table = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%k"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    known = {int(row.split("|")[0]): row.split("|")[1:] for row in table.stdout.splitlines() if row}
    assert set(jobs) <= set(known), f"jobs unknown to SLURM: {sorted(set(jobs) - set(known))}"
    for job_id, rule_dir in jobs.items():
        name, state, comment = known[job_id]
        assert state == "COMPLETED", (job_id, rule_dir, state)
        assert comment.startswith(rule_dir), (job_id, rule_dir, comment)
    assert len({known[j][0] for j in jobs}) == 1, "the jobs belong to more than one Snakemake run"


def test_results_equal_a_local_run_to_the_byte(runs):
    local = digests(runs["local"][0] / "results" / "e2e", REPRODUCIBLE)
    slurm = digests(runs["slurm"][0] / "results" / "e2e", REPRODUCIBLE)
    assert len(local) > 60 and any(k.endswith(".stl") for k in local)
    assert set(slurm) == set(local)
    differing = sorted(k for k in local if local[k] != slurm[k])
    assert not differing, f"differ between the local and the SLURM run: {differing}"


def test_trained_weights_are_identical(runs):
    import torch

    for fold in range(2):
        local, slurm = (
            torch.load(runs[k][0] / "results" / "e2e" / "models" / f"fold_{fold}" / "model.pt", weights_only=True)
            for k in ("local", "slurm")
        )
        assert local["state_dict"].keys() == slurm["state_dict"].keys()
        for name, tensor in local["state_dict"].items():
            assert torch.equal(tensor, slurm["state_dict"][name]), f"fold {fold}: {name} differs"
        assert local["network"] == slurm["network"]


def test_models_equal_a_local_run_to_the_byte(runs):
    local = digests(runs["local"][0] / "results" / "e2e", ["models/*/model.pt"])
    slurm = digests(runs["slurm"][0] / "results" / "e2e", ["models/*/model.pt"])
    assert set(local) == set(slurm) == {"models/fold_0/model.pt", "models/fold_1/model.pt"}
    assert local == slurm
