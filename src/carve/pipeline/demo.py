"""The bundled synthetic demo: its fixed layout, known before it is generated.

The layout is ``<sheet folder>/dicom/<case>/`` (one DICOM series per case), ``<sheet folder>/labels/<case>.nii.gz``
and the sheet itself; case ids are ``demo_000``, ``demo_001``, ... with the training cases first,
then the test cases, then the unlabelled ones (no label file). Because the
layout is fixed, the workflow knows every case when it is parsed, before the data exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from carve.pipeline.sheet import Case, load_sheet


def demo_case_ids(n_train: int, n_test: int, n_unlabelled: int = 0) -> list[str]:
    return [f"demo_{i:03d}" for i in range(n_train + n_test + n_unlabelled)]


def demo_role(i: int, n_train: int, n_test: int) -> str:
    """The role of demo case ``i``: training cases first, then test cases, then unlabelled ones."""
    return "train" if i < n_train else "test" if i < n_train + n_test else "unlabelled"


def demo_cases(
    sheet: str | Path, n_train: int, n_test: int, domains: Sequence[str] = (), n_unlabelled: int = 0
) -> list[Case]:
    """The demo's cases; with ``domains`` (dataset names) case ``i`` belongs to ``domains[i % len(domains)]``."""
    base = Path(sheet).parent
    ids = demo_case_ids(n_train, n_test, n_unlabelled)
    cases = []
    for i, c in enumerate(ids):
        role = demo_role(i, n_train, n_test)
        label = None if role == "unlabelled" else base / "labels" / f"{c}.nii.gz"
        dataset = domains[i % len(domains)] if domains else None
        cases.append(Case(c, base / "dicom" / c, label, role, dataset=dataset))
    return cases


def make_demo(
    sheet: str | Path,
    n_train: int,
    n_test: int,
    seed: int,
    shape: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    domains: Sequence[str] = (),
    n_unlabelled: int = 0,
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
    counts = {"n_train": n_train, "n_test": n_test, "n_unlabelled": n_unlabelled}
    written = Path(generate_demo(sheet.parent, seed=seed, domains=domains, **counts, **kwargs))
    if written.resolve() != sheet.resolve():
        raise RuntimeError(f"demo sheet written to {written}, expected {sheet}")
    expected = demo_cases(sheet, n_train, n_test, domains, n_unlabelled)
    if load_sheet(sheet, datasets=domains) != expected:
        raise RuntimeError(f"{sheet}: the generated demo does not have the announced layout")
    return expected
