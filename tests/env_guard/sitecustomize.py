"""Python runs this at startup when tests/env_guard is on PYTHONPATH: the env guard of carve_env_guard.py, on
for a Snakemake job's script process when CARVE_ENV_GUARD is set, a no-op otherwise. A sitecustomize further
down sys.path, which this one hides, is run after it."""

import importlib.machinery
import importlib.util
import os
import sys

import carve_env_guard

carve_env_guard.from_environment()

_here = os.path.dirname(os.path.abspath(__file__))
_next = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
)
if _next is not None and _next.loader is not None:
    _next.loader.exec_module(importlib.util.module_from_spec(_next))
