"""Glue between Snakemake step scripts and the package: logging and clear, one-line failures."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from carve.errors import CarveError

T = TypeVar("T")


def configure_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def run_step(log_path: str | Path | None, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run one pipeline step: log to ``log_path``. A :class:`~carve.errors.CarveError` (bad input or config, an
    output that cannot be written) exits with its message on one line; anything else is a bug or an unforeseen
    failure and keeps its traceback in the log."""
    configure_logging(log_path)
    log = logging.getLogger("carve")
    start = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except CarveError as err:
        message = str(err)
        log.error("%s", message)
        raise SystemExit(f"carve error: {message}") from None
    except Exception:
        log.exception("unexpected failure in %s", getattr(func, "__name__", func))
        raise
    log.info("%s finished in %.1f s", getattr(func, "__name__", func), time.perf_counter() - start)
    return result
