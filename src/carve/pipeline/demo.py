"""The bundled synthetic demo: its fixed layout, known before it is generated.

The layout is ``<sheet folder>/dicom/<case>/`` (one DICOM series per case), ``<sheet folder>/labels/<case>.nii.gz``
and the sheet itself; case ids are ``demo_000``, ``demo_001``, ... with the training cases first. Because the
layout is fixed, the workflow knows every case when it is parsed, before the data exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from carve.pipeline.sheet import Case, load_sheet


def demo_case_ids(n_train: int, n_test: int) -> list[str]:
    return [f"demo_{i:03d}" for i in range(n_train + n_test)]


def demo_cases(sheet: str | Path, n_train: int, n_test: int, domains: Sequence[str] = ()) -> list[Case]:
    """The demo's cases; with ``domains`` (dataset names) case ``i`` belongs to ``domains[i % len(domains)]``."""
    base = Path(sheet).parent
    ids = demo_case_ids(n_train, n_test)
    return [
        Case(
            c,
            base / "dicom" / c,
            base / "labels" / f"{c}.nii.gz",
            "train" if i < n_train else "test",
            dataset=domains[i % len(domains)] if domains else None,
        )
        for i, c in enumerate(ids)
    ]


def make_demo(
    sheet: str | Path,
    n_train: int,
    n_test: int,
    seed: int,
    shape: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    domains: Sequence[str] = (),
) -> list[Case]:
    """Generate the demo next to ``sheet`` and check it has exactly the announced layout."""
    from carve.pipeline.synth import generate_demo

    sheet = Path(sheet)
    kwargs = {}
    if shape is not None:
        kwargs["shape"] = tuple(int(s) for s in shape)
    if spacing_mm is not None:
        kwargs["spacing_mm"] = tuple(float(s) for s in spacing_mm)
    domains = tuple(domains)
    written = Path(generate_demo(sheet.parent, n_train=n_train, n_test=n_test, seed=seed, domains=domains, **kwargs))
    if written.resolve() != sheet.resolve():
        raise RuntimeError(f"demo sheet written to {written}, expected {sheet}")
    expected = demo_cases(sheet, n_train, n_test, domains)
    if load_sheet(sheet, datasets=domains) != expected:
        raise RuntimeError(f"{sheet}: the generated demo does not have the announced layout")
    return expected
