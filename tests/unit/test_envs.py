"""The conda environments users build on clusters pin exactly what CI installs (requirements.lock)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


ENVS = sorted((REPO / "envs").glob("*.yaml"))


def test_every_rule_env_exists():
    used = set()
    for smk in (REPO / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.strip().startswith('"../envs/'):
                used.add(line.strip().strip('",').removeprefix("../envs/"))
    assert used and used <= {p.name for p in ENVS}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_equal_lock(env):
    spec = yaml.safe_load(env.read_text())
    deps = spec["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    pins = lock()
    assert pip
    for requirement in pip:
        name, version = requirement.split("==")
        assert pins[name.lower().replace("_", "-")] == version, f"{env.name}: {requirement} differs from the lock"


def test_lock_pins_the_design_card_packages():
    pins = lock()
    design_card = ("snakemake", "torch", "simpleitk", "nibabel", "pydicom", "pandas", "trimesh", "scikit-image")
    for name in (*design_card, "pytest"):
        assert name in pins
    assert pins["torch"] == "2.13.0" and pins["snakemake"].startswith("9.")
