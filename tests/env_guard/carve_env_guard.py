"""Test-only guard of the env boundary: in a Snakemake job's Python process, refuse the imports its rule's conda
env (``envs/<env>.yaml``) could not satisfy, so that a run in the development venv (which has every package)
fails where ``snakemake --sdm conda`` would.

``sitecustomize.py`` beside this file turns it on for every Python process started with this folder on
``PYTHONPATH`` and ``CARVE_ENV_GUARD`` naming the JSON file tests/conftest.py (:func:`conftest.env_guard`)
writes::

    {"scripts": {"plan.py": {"rules": ["plan"], "envs": ["torch"], "allowed": ["numpy", ...]}, ...},
     "always": ["carve", "snakemake"], "records": "<folder>"}

A process is guarded when it runs a script Snakemake wrote (``.snakemake/scripts/tmpXXXXXXXX.<script>.py``);
its rule is found from ``<script>``. Every other process (Snakemake itself, pytest) is left alone.

What is refused: an import by carve code or by the job's script (``__main__``) of a top-level module that is
not the standard library, ``carve``, ``snakemake``, or one of the modules of the env's pip packages. Imports
made by the packages themselves (scikit-image importing its own dependencies) pass: pip installs those with
them. The check wraps ``builtins.__import__``, so it holds even for a module some package imported first (a
``sys.meta_path`` finder would not see it, being found in ``sys.modules``). A refused import raises
``ModuleNotFoundError`` naming the module, the importer, the rule and the env, as the real env would (code that
catches ``ImportError`` behaves as it would there), and is written to the records folder (one file per
process) so that a test sees it even when it was caught.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

SCRIPT = re.compile(r"(?:^|[/\\])\.snakemake[/\\]scripts[/\\]tmp[^./\\]+\.([^/\\]+\.py)$")


def _record(records: str | None, event: dict) -> None:
    if not records:
        return
    path = Path(records) / f"{os.getpid()}.jsonl"
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def install(where: str, allowed: Iterable[str], records: str | None = None, event: dict | None = None) -> None:
    """Refuse, from now on in this process, what ``allowed`` (top-level module names, besides the standard
    library) does not cover, for imports by carve code and by ``__main__``. ``where`` names the rule and env."""
    allowed = frozenset(allowed)
    event = dict(event or {})

    def check(name: str, importer: str) -> None:
        top = name.partition(".")[0]
        if not top or top in allowed or top in sys.stdlib_module_names:
            return
        if importer != "__main__" and importer.partition(".")[0] != "carve":
            return  # a package importing its own dependencies: pip installs them with it
        message = (
            f"env guard: {where} imports '{top}' (from {importer}), which that conda env does not provide; "
            "import it only in a rule whose env lists it, or give this rule an env that does "
            "(tests/unit/test_env_boundary.py)"
        )
        _record(records, {**event, "event": "blocked", "module": top, "importer": importer, "message": message})
        raise ModuleNotFoundError(message, name=top)

    original_import = builtins.__import__
    original_import_module = importlib.import_module

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0:
            check(name, (globals or {}).get("__name__") or "")
        return original_import(name, globals, locals, fromlist, level)

    def guarded_import_module(name, package=None):
        if not name.startswith("."):
            check(name, sys._getframe(1).f_globals.get("__name__") or "")
        return original_import_module(name, package)

    builtins.__import__ = guarded_import
    importlib.import_module = guarded_import_module
    _record(records, {**event, "event": "guarded"})


def from_environment() -> None:
    """Guard this process if it runs a Snakemake job's script and ``CARVE_ENV_GUARD`` is set (sitecustomize)."""
    config = os.environ.get("CARVE_ENV_GUARD")
    found = SCRIPT.search(sys.argv[0]) if config and sys.argv and sys.argv[0] else None
    if found is None:
        return
    guard = json.loads(Path(config).read_text(encoding="utf-8"))
    script, records = found.group(1), guard.get("records")
    entry = guard["scripts"].get(script)
    if entry is None:  # a rule the test did not map: say so, and let the test fail on the record
        _record(records, {"event": "unguarded", "script": script})
        sys.stderr.write(f"env guard: no rule of rules/*.smk runs {script}; this job is not guarded\n")
        return
    envs = ", ".join(f"envs/{e}.yaml" for e in entry["envs"])
    where = f"rule {', '.join(entry['rules'])} (conda: {envs})"
    event = {"script": script, "rules": entry["rules"], "envs": entry["envs"]}
    install(where, [*entry["allowed"], *guard["always"]], records, event)
