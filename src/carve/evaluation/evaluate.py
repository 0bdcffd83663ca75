"""Per-case, per-label metrics against references, and their summary per set and label."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from carve.errors import CarveError
from carve.imaging.io import atomic_write_text, read_image

SUMMARY_METRICS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "f1",
    "hd95_mm",
    "assd_mm",
    "nsd",
    "volume_difference_rel",
)


class EvaluationError(CarveError, ValueError):
    pass


def evaluate_case(
    case: str,
    set_name: str,
    reference_path: Path,
    prediction_path: Path,
    label_names: Mapping[int, str],
    tolerance_mm: float = 1.0,
) -> pd.DataFrame:
    from carve.evaluation.metrics import evaluate_labels

    reference, ref_geometry = read_image(reference_path)
    prediction, pred_geometry = read_image(prediction_path)
    if reference.shape != prediction.shape or not ref_geometry.is_close(pred_geometry, 1e-3, reference.shape):
        raise EvaluationError(
            f"case '{case}': prediction {prediction_path} and reference {reference_path} are on different grids "
            f"({prediction.shape} vs {reference.shape})"
        )
    rows = evaluate_labels(reference, prediction, ref_geometry.spacing_mm, dict(label_names), tolerance_mm)
    table = pd.DataFrame(rows)
    table.insert(0, "set", set_name)
    table.insert(0, "case", case)
    return table


def write_table(path: Path, table: pd.DataFrame) -> None:
    atomic_write_text(path, table.to_csv(sep="\t", index=False, float_format="%.6g"))


def _statistics(table: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """Mean, SD and median of each metric over its finite values (NaN where none is finite), and ``_n``: how many
    values that was, so that a case left out (a missed label's infinite HD95, an undefined recall) shows."""
    out: dict[str, float] = {}
    for m in metrics:
        values = table[m].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        out[f"{m}_mean"] = float(finite.mean()) if finite.size else float("nan")
        out[f"{m}_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
        out[f"{m}_median"] = float(np.median(finite)) if finite.size else float("nan")
        out[f"{m}_n"] = int(finite.size)
    return out


def summarise(tables: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate per-case tables; summary rows per set and label with mean, SD and median."""
    cases = pd.concat(list(tables), ignore_index=True) if tables else pd.DataFrame(columns=["case", "set", "label"])
    rows = []
    metrics = [m for m in SUMMARY_METRICS if m in cases.columns]
    for (set_name, label), group in cases.groupby(["set", "label"], sort=True):
        rows.append({"set": set_name, "label": label, "cases": len(group), **_statistics(group, metrics)})
    for set_name, group in cases.groupby("set", sort=True):
        per_case = group.groupby("case")[metrics].mean(numeric_only=True)
        rows.append(
            {"set": set_name, "label": "mean_foreground", "cases": len(per_case), **_statistics(per_case, metrics)}
        )
    return cases, pd.DataFrame(rows)


def summarise_files(case_tables: Sequence[Path], out_cases: Path, out_summary: Path) -> pd.DataFrame:
    tables = [pd.read_csv(p, sep="\t") for p in case_tables]
    cases, summary = summarise(tables)
    write_table(out_cases, cases)
    write_table(out_summary, summary)
    return summary


def evaluate_case_to_file(
    case: str,
    set_name: str,
    reference_path: Path,
    prediction_path: Path,
    label_names: Mapping[int, str],
    tolerance_mm: float,
    out: Path,
) -> pd.DataFrame:
    table = evaluate_case(case, set_name, reference_path, prediction_path, label_names, tolerance_mm)
    write_table(out, table)
    return table


def predict_and_evaluate(
    cases: Sequence[str],
    set_of: Callable[[str], str],
    references: Callable[[str], Path],
    label_names: Mapping[int, str],
    tolerance_mm: float,
    predictions_dir: Path,
    predict: Callable[[str, tuple[Path, Path, Path]], object],
) -> pd.DataFrame:
    """Predict each case with ``predict(case, (labels, entropy, scores))`` into ``predictions_dir/<case>.nii.gz``
    (the uncertainty outputs go to a scratch folder and are not kept) and evaluate it; the per-case tables joined."""
    predictions_dir = Path(predictions_dir)
    predictions_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            prediction = predictions_dir / f"{case}.nii.gz"
            predict(case, (prediction, Path(scratch) / f"{case}.nii.gz", Path(scratch) / f"{case}.tsv"))
            tables.append(evaluate_case(case, set_of(case), references(case), prediction, label_names, tolerance_mm))
    return pd.concat(tables, ignore_index=True)
