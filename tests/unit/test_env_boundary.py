"""The env boundary: each rule's script imports only what its rule's conda env (envs/<env>.yaml) provides.

Three layers. (1) Import time, here, cheap: every script's imports, run in one process per env under the guard
of tests/env_guard (carve code and the script may import only the standard library, carve, snakemake and the
env's pip packages). (2) Run time: the shared end-to-end run (tests/conftest.py ``tiny_run``) runs every job
under the same guard, so the imports inside functions (``import torch`` in a planning function) are caught on
the paths the run takes; the multi-dataset path is run here up to the plan. (3) The guard itself is tested here
on a fake Snakemake script.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ALWAYS_IMPORTABLE,
    ENV_GUARD,
    REPO,
    assert_env_boundary_held,
    env_guard,
    env_guard_records,
    env_modules,
    rule_scripts,
    run_snakemake,
)

SCRIPTS = REPO / "workflow" / "scripts"
ENVS = sorted(p.stem for p in (REPO / "envs").glob("*.yaml"))


def run_guarded(code: str, env: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``code`` run as ``__main__`` in a fresh Python with the guard of ``env`` installed first."""
    prologue = (
        f"import sys; sys.path.insert(0, {str(ENV_GUARD)!r}); import carve_env_guard\n"
        f"carve_env_guard.install('rule <test> (conda: envs/{env}.yaml)', "
        f"{sorted(env_modules(env) | set(ALWAYS_IMPORTABLE))!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prologue + code], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def test_every_rule_names_its_env_and_script():
    rules = rule_scripts()
    assert len(rules) > 20
    lacking = {rule: found for rule, found in rules.items() if None in found}
    assert not lacking, f"rules without `conda:` or `script:` (the guard cannot map them): {lacking}"
    for rule, (env, script) in rules.items():
        assert env in ENVS and (SCRIPTS / script).is_file(), (rule, env, script)


def imports_of(script: Path) -> str:
    """The import statements of a script (where they sit: the adapters import at the top)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(ast.unparse(n) for n in nodes)


@pytest.mark.parametrize("env", ENVS)
def test_scripts_import_only_what_their_env_provides(env):
    """Import time: every script of a rule in ``env`` imports (carve modules, run to their end) under its guard."""
    scripts = sorted({script for e, script in rule_scripts().values() if e == env})
    assert scripts
    code = (
        "import json\nrefused = {}\n"
        f"for name, imports in {[(s, imports_of(SCRIPTS / s)) for s in scripts]!r}:\n"
        "    try:\n        exec(compile(imports, name, 'exec'), {'__name__': '__main__'})\n"
        "    except ImportError as err:\n        refused[name] = str(err)\n"
        "print(json.dumps(refused))\n"
    )
    done = run_guarded(code, env)
    assert done.returncode == 0, done.stderr[-3000:]
    refused = json.loads(done.stdout.strip().splitlines()[-1])
    assert not refused, f"scripts of rules in envs/{env}.yaml import what it lacks: {refused}"


FAKE = """
import skimage.measure  # a package of the env importing its own dependencies: allowed
from carve.planning.topology import NetworkConfig  # torch-free
try:
    import torch
except ImportError as err:
    print("caught:", err)
import carve.training.network  # torch, from carve code
print("imported carve.training.network")
"""


def fake_job(tmp_path: Path, env: str) -> tuple[subprocess.CompletedProcess, list[dict], Path]:
    """FAKE run as Snakemake runs a rule's script, for a rule `fake_step` in ``env``, with env_guard's setup."""
    guard = tmp_path / "guard"
    environ = env_guard(guard)
    config = json.loads((guard / "guard.json").read_text())
    config["scripts"] = {"fake_step.py": {"rules": ["fake_step"], "envs": [env], "allowed": sorted(env_modules(env))}}
    (guard / "guard.json").write_text(json.dumps(config))
    script = tmp_path / ".snakemake" / "scripts" / "tmpab12_cd3.fake_step.py"
    script.parent.mkdir(parents=True)
    script.write_text(FAKE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=environ)
    return done, env_guard_records(guard), guard


def test_guard_refuses_torch_to_a_script_of_the_imaging_env(tmp_path):
    done, records, guard = fake_job(tmp_path, "imaging")
    assert done.returncode != 0
    expected = "env guard: rule fake_step (conda: envs/imaging.yaml) imports 'torch' (from carve.training.network)"
    assert f"ModuleNotFoundError: {expected}" in done.stderr
    assert "caught: env guard: rule fake_step (conda: envs/imaging.yaml) imports 'torch' (from __main__)" in done.stdout
    blocked = [(r["module"], r["importer"]) for r in records if r["event"] == "blocked"]
    assert blocked == [("torch", "__main__"), ("torch", "carve.training.network")]
    assert [r["rules"] for r in records if r["event"] == "guarded"] == [["fake_step"]]
    with pytest.raises(AssertionError, match="imports outside the rules' conda envs"):
        assert_env_boundary_held(guard, "")
    # only a Snakemake job's script is guarded: not pytest, not Snakemake, not this
    plain = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env_guard(tmp_path / "other")
    )
    assert plain.returncode == 0, plain.stderr


def test_guard_lets_a_script_of_the_torch_env_import_torch(tmp_path):
    done, records, _ = fake_job(tmp_path, "torch")
    assert done.returncode == 0, done.stderr
    assert "imported carve.training.network" in done.stdout and "caught" not in done.stdout
    assert [r["event"] for r in records] == ["guarded"]


def test_planning_for_the_cpu_needs_no_torch_and_auto_needs_it():
    """Topology and memory estimate are torch-free (carve.planning.topology); `device: auto` asks torch, which is why
    rule plan runs in envs/torch.yaml."""
    code = (
        "from carve.planning.plan import PlanOptions, fit_to_memory\n"
        "print(fit_to_memory((12, 32, 32), (3.0, 1.2, 1.2), PlanOptions(max_patch_voxels=8192), 1, 3)[:4])\n"
        "try:\n    fit_to_memory((12, 32, 32), (3.0, 1.2, 1.2), PlanOptions(device='auto'), 1, 3)\n"
        "except ImportError as err:\n    print('auto:', err)\n"
    )
    done = run_guarded(code, "imaging")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'cpu')" in done.stdout and "auto: env guard: rule <test> (conda: envs/imaging.yaml) imports 'torch'" in (
        done.stdout
    )
    assert rule_scripts()["plan"] == ("torch", "plan.py")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"in_channels": 2, "n_classes": 3, "base_channels": 4, "max_channels": 12, "residual": True},
        {"in_channels": 4, "base_channels": 4, "residual": True},  # identity skip at stage 0
        {
            "strides": ((1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2)),
            "kernel_sizes": ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
            "deep_supervision": False,
        },
    ],
)
def test_torch_free_parameter_count_equals_the_networks(kwargs):
    """The memory estimate planning uses counts the U-Net's parameters without building it."""
    from carve.planning.topology import NetworkConfig, parameter_count
    from carve.training.network import UNet3D

    config = NetworkConfig(**kwargs)
    assert parameter_count(config) == sum(p.numel() for p in UNet3D(config).parameters())


@pytest.mark.e2e
def test_several_datasets_convert_and_plan_inside_their_envs(tmp_path):
    """The multi-dataset path up to the plan, under the guard: union labels (carve.imaging.labels) in convert_label
    (envs/imaging.yaml), per-dataset plans (envs/torch.yaml). The rest of it (training, prediction, comparison)
    runs in the full multi-dataset run; its fixture can run under the guard as tiny_run does (env=env_guard())."""
    import shutil

    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copytree(REPO / "config", workdir / "config")
    target = "results/md/plans.json"
    guard = tmp_path / "guard"
    done = run_snakemake(
        workdir, "--cores", "2", target, configs=(REPO / "tests" / "e2e" / "multidomain.yaml",), env=env_guard(guard)
    )
    refused = "".join(f"{r['message']}\n" for r in env_guard_records(guard) if r["event"] == "blocked")
    assert done.returncode == 0, refused + done.stderr[-5000:]
    assert_env_boundary_held(guard, done.stdout + done.stderr)
    ran = {r["rules"][0] for r in env_guard_records(guard) if r["event"] == "guarded"}
    assert {"convert_label", "plan"} <= ran
    assert set(json.loads((workdir / target).read_text())["datasets"]) == {"t1", "t2"}
