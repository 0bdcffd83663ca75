"""Shared against individual models, per dataset, on the same folds (several datasets, one network).

With ``individual_models: true`` every dataset also gets a model per fold trained on that fold's training cases of
the dataset only (same plans, network, budget and seeds as the shared folds; :func:`carve.training.fold.train_one_fold`
with ``dataset``). Each training case is then predicted twice by models that did not see it: by the shared
fold that held it out (``cv/``, evaluated in ``metrics/cases.tsv``) and by its dataset's individual fold
(:func:`evaluate_individual_models`). :func:`compare_datasets` puts the two side by side per dataset and
label, with the paired difference per case, in ``metrics/datasets.tsv`` and ``report/datasets.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("carve.evaluation.compare")

COMPARED = ("dice", "nsd", "hd95_mm")


def evaluate_individual_models(
    dataset: str,
    cases: Sequence[str],
    images: Sequence[Path],
    references: Sequence[Path],
    plans_path: Path,
    splits_path: Path,
    model_paths: Sequence[Path],
    label_names: Mapping[int, str],
    tolerance_mm: float,
    predict_options: Mapping[str, Any],
    out_table: Path,
    predictions_dir: Path,
    device: str = "auto",
    threads: int = 1,
    members_path: Path | None = None,
    precision_path: Path | None = None,
) -> pd.DataFrame:
    """Cross-validation of a dataset's individual models: each case predicted by the fold that held it out (with
    the members ``members_path`` kept and in the precision ``precision_path`` decided, as the shared models'
    cross-validation)."""
    from carve.evaluation.evaluate import predict_and_evaluate, write_table
    from carve.training.fold import predict_held_out

    if not (len(cases) == len(images) == len(references)):
        raise ValueError(f"dataset '{dataset}': {len(cases)} cases, {len(images)} images, {len(references)} labels")
    image_of = dict(zip(cases, (Path(p) for p in images), strict=True))
    reference_of = dict(zip(cases, (Path(p) for p in references), strict=True))
    table = predict_and_evaluate(
        cases,
        lambda _case: "cv",
        reference_of.__getitem__,
        label_names,
        tolerance_mm,
        predictions_dir,
        lambda case, outputs: predict_held_out(
            case, image_of[case], plans_path, splits_path, model_paths, outputs, predict_options, device, threads,
            dataset=dataset, members_path=members_path, precision_path=precision_path,
        ),
    )  # fmt: skip
    table.insert(0, "dataset", dataset)
    write_table(out_table, table)
    return table


def comparison_table(
    shared: pd.DataFrame, individual: pd.DataFrame, case_datasets: Mapping[str, str], metrics=COMPARED
) -> pd.DataFrame:
    """Per dataset and label (then ``mean_foreground``): the mean of each metric over the dataset's
    cross-validation cases for the shared and the individual models, and the mean paired difference
    (shared - individual) with how many cases the shared model scored higher on Dice."""
    shared = shared[(shared["set"] == "cv") & shared["case"].isin(list(case_datasets))].copy()
    shared["dataset"] = shared["case"].map(case_datasets)
    metrics = [m for m in metrics if m in shared.columns and m in individual.columns]
    keys = ["dataset", "case", "label"]
    both = shared[keys + metrics].merge(individual[keys + metrics], on=keys, suffixes=("_shared", "_individual"))
    if both.empty:
        raise ValueError("no case has both a shared and an individual cross-validation prediction")
    rows = []
    for dataset, group in both.groupby("dataset", sort=False):
        labels = list(dict.fromkeys(group["label"]))
        parts = [(label, group[group["label"] == label]) for label in labels]
        parts.append(("mean_foreground", group.groupby("case")[[c for c in both.columns if c not in keys]].mean()))
        for label, part in parts:
            row: dict[str, Any] = {"dataset": dataset, "label": label, "cases": len(part)}
            for m in metrics:
                a = part[f"{m}_shared"].to_numpy(dtype=float)
                b = part[f"{m}_individual"].to_numpy(dtype=float)
                ok = np.isfinite(a) & np.isfinite(b)
                row[f"{m}_shared"] = float(a[ok].mean()) if ok.any() else float("nan")
                row[f"{m}_individual"] = float(b[ok].mean()) if ok.any() else float("nan")
                row[f"{m}_difference"] = float((a[ok] - b[ok]).mean()) if ok.any() else float("nan")
            d = part["dice_shared"].to_numpy(dtype=float) - part["dice_individual"].to_numpy(dtype=float)
            row["shared_better_cases"] = int((d > 0).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def comparison_figure(table: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = table[table["label"] == "mean_foreground"]
    rows = table[table["label"] != "mean_foreground"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1), 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, rows["dice_shared"], 0.4, label="shared model")
    ax.bar(x + 0.2, rows["dice_individual"], 0.4, label="individual models")
    ax.set_xticks(x, [f"{d}\n{lab}" for d, lab in zip(rows["dataset"], rows["label"], strict=True)], fontsize=8)
    ax.set_ylabel("cross-validation Dice")
    ax.set_ylim(0, 1)
    summary = ", ".join(
        f"{d}: {s:.3f} vs {i:.3f}"
        for d, s, i in zip(means["dataset"], means["dice_shared"], means["dice_individual"], strict=True)
    )
    ax.set_title(f"mean Dice shared vs individual: {summary}", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def compare_datasets(
    shared_cases: Path, individual_tables: Sequence[Path], case_datasets: Mapping[str, str], out_tsv: Path, out_png
) -> pd.DataFrame:
    import io

    from carve.evaluation.evaluate import write_table
    from carve.imaging.io import atomic_write_bytes

    shared = pd.read_csv(shared_cases, sep="\t")
    individual = pd.concat([pd.read_csv(p, sep="\t") for p in individual_tables], ignore_index=True)
    table = comparison_table(shared, individual, case_datasets)
    write_table(out_tsv, table)
    fig = comparison_figure(table)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(Path(out_png), png.getvalue())
    for row in table[table["label"] == "mean_foreground"].itertuples():
        log.info(
            "dataset %s: mean Dice shared %.4f, individual %.4f", row.dataset, row.dice_shared, row.dice_individual
        )
    return table
