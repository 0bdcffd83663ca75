"""Learning curve: how does Dice grow with the number of labelled training cases?

For each draw ``d`` the training cases are shuffled once (seeded from the config seed and ``d``); the model for
size ``n`` trains on the first ``n`` of that order, so within a draw the subsets are **nested** (the cases of
``n = 2`` are among those of ``n = 4``). The training cases beyond the largest size are the draw's **held-out**
cases; together with the labelled test cases they are the draw's fixed evaluation set, the same for every size
of the draw. So a step along the curve changes only the number of training cases, never the cases measured,
and the spread over draws shows how much the answer depends on *which* cases were labelled.

A size needs at least one held-out training case, so sizes above (training cases - 1) are dropped, with a
warning at parse time; a configuration where none is left is refused. Each draw's subsets are written to a JSON
file of their own, so that raising the number of draws leaves the models already trained alone.

Every model is trained like a fold (:func:`carve.training.fold.train_config_from`, the config's ``train`` keys and the
plans), validating on the draw's held-out training cases, which changes only the curves it writes (the final
weights are kept, there is no selection by validation). The models train supervised: where the folds train a mean
teacher within a time budget, they train the count a supervised step fits in the same minutes
(``supervised_iterations`` of the plans), not the mean teacher's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carve.errors import InputError
from carve.imaging.io import atomic_write_text

log = logging.getLogger("carve.evaluation.learning_curve")

CURVE_METRICS = ("dice", "iou", "nsd", "hd95_mm")
MEAN_FOREGROUND = "mean_foreground"
_ORDER_STREAM = 1  # separates the draws' shuffles from the models' seeds in the seed sequence
_MODEL_STREAM = 2


@dataclass(frozen=True)
class LearningCurveOptions:
    """The config's ``learning_curve`` block: training-set sizes and draws per size."""

    sizes: tuple[int, ...]
    draws: int = 3

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> LearningCurveOptions | None:
        """``None`` when the block is absent or null (the mode is off)."""
        if not block:
            return None
        return cls(sizes=tuple(int(n) for n in block["sizes"]), draws=int(block.get("draws", 3)))


@dataclass(frozen=True)
class Subset:
    """One model of the curve: ``n`` training cases of draw ``draw`` and the draw's evaluation cases."""

    n: int
    draw: int
    train: tuple[str, ...]
    held_out: tuple[str, ...]  # training cases no size of this draw trains on
    test: tuple[str, ...]  # labelled test cases

    @property
    def evaluate(self) -> tuple[str, ...]:
        return self.held_out + self.test

    def set_of(self, case: str) -> str:
        """``held_out`` or ``test``: where an evaluation case comes from."""
        if case in self.held_out:
            return "held_out"
        if case in self.test:
            return "test"
        raise KeyError(f"case '{case}' is not evaluated by n={self.n}, draw {self.draw}")


def usable_sizes(sizes: Sequence[int], n_train: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kept, dropped) sizes, each sorted: a size must leave at least one training case held out."""
    wanted = sorted(set(int(n) for n in sizes))
    if any(n < 1 for n in wanted):
        raise InputError(f"learning_curve sizes must be >= 1, got {wanted}")
    kept = tuple(n for n in wanted if n <= n_train - 1)
    dropped = tuple(n for n in wanted if n > n_train - 1)
    if not kept:
        raise InputError(
            f"learning_curve: no size fits {n_train} training case(s) (each size must leave one case held out, "
            f"so at most {n_train - 1}); sizes given: {wanted}"
        )
    return kept, dropped


def draw_order(cases: Sequence[str], seed: int, draw: int) -> list[str]:
    """The training cases in the seeded order of draw ``draw`` (independent of the order given)."""
    names = sorted(set(cases))
    if len(names) != len(cases):
        raise ValueError("case ids must be unique")
    order = np.random.default_rng([int(seed), _ORDER_STREAM, int(draw)]).permutation(len(names))
    return [names[i] for i in order]


def subsets_of_draw(
    train_cases: Sequence[str], test_cases: Sequence[str], sizes: Sequence[int], draw: int, seed: int
) -> list[Subset]:
    """The nested subsets of draw ``draw``, one per size, all evaluated on the same held-out and test cases."""
    kept, _ = usable_sizes(sizes, len(train_cases))
    overlap = sorted(set(train_cases) & set(test_cases))
    if overlap:
        raise InputError(f"cases both training and test cases: {overlap}")
    test = tuple(sorted(test_cases))
    order = draw_order(train_cases, seed, draw)
    held_out = tuple(sorted(order[max(kept) :]))
    return [Subset(n, int(draw), tuple(sorted(order[:n])), held_out, test) for n in kept]


def draw_subsets(
    train_cases: Sequence[str], test_cases: Sequence[str], sizes: Sequence[int], draws: int, seed: int
) -> list[Subset]:
    """The subsets of draws ``0 .. draws - 1`` (see :func:`subsets_of_draw`)."""
    if draws < 1:
        raise InputError(f"learning_curve draws must be >= 1, got {draws}")
    return [s for draw in range(draws) for s in subsets_of_draw(train_cases, test_cases, sizes, draw, seed)]


def model_seed(seed: int, n: int, draw: int) -> int:
    """The training seed of the model of size ``n``, draw ``draw`` (derived from the config seed)."""
    return int(np.random.SeedSequence([int(seed), _MODEL_STREAM, int(n), int(draw)]).generate_state(1)[0] >> 1)


def write_subsets(
    path: Path, train_cases: Sequence[str], test_cases: Sequence[str], sizes: Sequence[int], draw: int, seed: int
) -> list[Subset]:
    """Draw the subsets of one draw and write them to ``path`` as JSON (sizes that do not fit are dropped)."""
    kept, dropped = usable_sizes(sizes, len(train_cases))
    if dropped:
        log.warning(
            "learning_curve: size(s) %s dropped: at most %d of %d training cases leave one held out",
            list(dropped),
            len(train_cases) - 1,
            len(train_cases),
        )
    subsets = subsets_of_draw(train_cases, test_cases, kept, draw, seed)
    for s in subsets:
        log.info("n=%d draw %d: train %s; evaluate %s", s.n, s.draw, list(s.train), list(s.evaluate))
    document = {
        "seed": int(seed),
        "draw": int(draw),
        "sizes": list(kept),
        "nested": True,
        "subsets": [{**asdict(s), "model_seed": model_seed(seed, s.n, s.draw)} for s in subsets],
    }
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return subsets


def load_subset(path: Path, n: int, draw: int) -> Subset:
    for entry in json.loads(Path(path).read_text())["subsets"]:
        if int(entry["n"]) == int(n) and int(entry["draw"]) == int(draw):
            return Subset(
                int(entry["n"]),
                int(entry["draw"]),
                tuple(entry["train"]),
                tuple(entry["held_out"]),
                tuple(entry["test"]),
            )
    raise InputError(f"{path}: no learning-curve subset n={n}, draw {draw}")


def train_subset_model(
    n: int,
    draw: int,
    plans_path: Path,
    subsets_path: Path,
    case_paths: Sequence[Path],
    train_options: Mapping[str, Any],
    seed: int,
    out_dir: Path,
    device: str = "auto",
    threads: int = 1,
) -> Path:
    """Train the model of size ``n``, draw ``draw`` with the folds' training configuration."""
    from carve.planning.plan import load_plans
    from carve.prediction.predict import select_device
    from carve.training.fold import load_preprocessed, train_config_from
    from carve.training.train import train_fold

    plans = load_plans(plans_path)
    subset = load_subset(subsets_path, n, draw)
    train_cases, val_cases = load_preprocessed(
        case_paths, (subset.train, subset.held_out), f"{subsets_path}: n={n} draw {draw}"
    )
    config = train_config_from(plans, train_options, model_seed(seed, n, draw), supervised=True)
    device = select_device(device)
    log.info("n=%d draw %d: training on %s, validating on %s", n, draw, list(subset.train), list(subset.held_out))
    model = train_fold(
        train_cases,
        val_cases,
        config,
        Path(out_dir),
        device=device,
        threads=threads,
    )
    resolved = {
        "n": n,
        "draw": draw,
        "train_cases": list(subset.train),
        "val_cases": list(subset.held_out),
        "train": config.to_dict(),
    }
    atomic_write_text(Path(out_dir) / "config.json", json.dumps(resolved, indent=2) + "\n")
    return model


def evaluate_subset_model(
    n: int,
    draw: int,
    subsets_path: Path,
    plans_path: Path,
    model_path: Path,
    images: Mapping[str, Path],
    references: Mapping[str, Path],
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
    """Predict the draw's evaluation cases with one model (with the members ``members_path`` kept and in the
    precision ``precision_path`` decided, as the run's own predictions); per-case, per-label metrics with ``n`` and
    ``draw``."""
    from carve.evaluation.evaluate import predict_and_evaluate, write_table
    from carve.training.fold import predict_with_models

    subset = load_subset(subsets_path, n, draw)
    missing = [c for c in subset.evaluate if c not in images or c not in references]
    if missing:
        raise InputError(f"{subsets_path}: n={n} draw {draw} evaluates cases without image or label: {missing}")
    table = predict_and_evaluate(
        subset.evaluate,
        subset.set_of,
        references.__getitem__,
        label_names,
        tolerance_mm,
        predictions_dir,
        lambda case, outputs: predict_with_models(
            case,
            images[case],
            plans_path,
            [model_path],
            outputs,
            predict_options,
            device,
            threads,
            members_path=members_path,
            precision_path=precision_path,
        ),
    )
    table.insert(0, "draw", draw)
    table.insert(0, "n", n)
    write_table(out_table, table)
    return table


def _label_order(cases: pd.DataFrame) -> list[str]:
    if "label_value" in cases.columns:
        return [str(v) for v in cases.drop_duplicates("label").sort_values(["label_value", "label"])["label"]]
    return sorted(str(v) for v in cases["label"].unique())


def _finite_stats(values: pd.Series, name: str) -> dict[str, float]:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return {
        f"{name}_mean": float(v.mean()) if v.size else float("nan"),
        f"{name}_sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
    }


def curve_table(cases: pd.DataFrame, metrics: Sequence[str] = CURVE_METRICS) -> pd.DataFrame:
    """One row per size, draw and label (then ``mean_foreground``): mean and SD over the evaluation cases.

    ``cases`` holds the per-case, per-label rows of every model (columns ``n``, ``draw``, ``case``, ``label``
    and the metrics). Undefined and infinite values are left out of means and SDs; ``cases`` counts every case.
    """
    missing = [c for c in ("n", "draw", "case", "label", "dice") if c not in cases.columns]
    if missing:
        raise ValueError(f"learning-curve metrics lack the column(s) {', '.join(missing)}")
    metrics = [m for m in metrics if m in cases.columns]
    labels = _label_order(cases)
    rows = []
    for (n, draw), group in cases.groupby(["n", "draw"], sort=True):
        parts = [(label, group[group["label"].astype(str) == label]) for label in labels]
        parts.append((MEAN_FOREGROUND, group.groupby("case")[metrics].mean(numeric_only=True)))
        for label, part in parts:
            row: dict[str, Any] = {"n": int(n), "draw": int(draw), "label": label, "cases": len(part)}
            for m in metrics:
                row.update(_finite_stats(part[m], m))
            rows.append(row)
    return pd.DataFrame(rows)


def curve_summary(curve: pd.DataFrame) -> pd.DataFrame:
    """Per size and label, over the draws' mean Dice: mean, SD (n - 1), minimum and maximum."""
    rows = []
    labels = list(dict.fromkeys(curve["label"]))
    for (n, label), group in curve.groupby(["n", "label"], sort=False):
        values = group["dice_mean"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        rows.append(
            {
                "n": int(n),
                "label": label,
                "draws": len(group),
                "dice_mean": float(values.mean()) if values.size else float("nan"),
                "dice_sd": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                "dice_min": float(values.min()) if values.size else float("nan"),
                "dice_max": float(values.max()) if values.size else float("nan"),
            }
        )
    table = pd.DataFrame(rows)
    table["_label"] = table["label"].map(labels.index)
    return table.sort_values(["_label", "n"]).drop(columns="_label").reset_index(drop=True)


def learning_curve_figure(curve: pd.DataFrame):
    """One panel per label and one for the mean over labels: each draw's mean Dice against n (points), the
    mean over draws (line) and mean ± SD over draws (band); n on a log2 axis."""
    from matplotlib.figure import Figure

    from carve.evaluation.report import plot_style

    summary = curve_summary(curve)
    labels = list(dict.fromkeys(summary["label"]))
    sizes = sorted(int(n) for n in summary["n"].unique())
    draws = sorted(int(d) for d in curve["draw"].unique())
    with plot_style():
        fig = Figure(figsize=(3.6 * max(len(labels), 1), 3.6), layout="constrained")
        axes = fig.subplots(1, max(len(labels), 1), squeeze=False).ravel()
        for ax, label in zip(axes, labels, strict=False):
            points = curve[curve["label"] == label]
            spread = np.linspace(-0.06, 0.06, len(draws)) if len(draws) > 1 else np.zeros(1)
            for offset, draw in zip(spread, draws, strict=True):
                mine = points[points["draw"] == draw].sort_values("n")
                x = mine["n"].to_numpy(dtype=float) * 2.0**offset
                ax.scatter(x, mine["dice_mean"], s=14, color="0.45", zorder=3, label="one draw" if draw == 0 else None)
            line = summary[summary["label"] == label].sort_values("n")
            n = line["n"].to_numpy(dtype=float)
            ax.plot(n, line["dice_mean"], color="#1f77b4", marker="o", label="mean over draws")
            if line["dice_sd"].notna().any():
                low = np.clip(line["dice_mean"] - line["dice_sd"], 0, 1)
                high = np.clip(line["dice_mean"] + line["dice_sd"], 0, 1)
                ax.fill_between(n, low, high, color="#1f77b4", alpha=0.2, label="± SD over draws")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.minorticks_off()
            ax.set(
                title="mean over labels" if label == MEAN_FOREGROUND else label,
                xlabel="training cases",
                ylim=(-0.02, 1.02),
            )
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("Dice (mean over evaluation cases)")
        axes[0].legend(loc="lower right", fontsize=7)
    return fig


def write_learning_curve(case_tables: Sequence[Path], out_tsv: Path, out_summary: Path, out_png: Path) -> pd.DataFrame:
    """Aggregate the models' per-case tables into the curve, its summary over draws, and the figure."""
    from carve.evaluation.report import save_png

    if not case_tables:
        raise ValueError("learning curve: no model's metrics to aggregate")
    curve = curve_table(pd.concat([pd.read_csv(p, sep="\t") for p in case_tables], ignore_index=True))
    atomic_write_text(out_tsv, curve.to_csv(sep="\t", index=False, float_format="%.6g"))
    summary = curve_summary(curve)
    atomic_write_text(out_summary, summary.to_csv(sep="\t", index=False, float_format="%.6g"))
    save_png(learning_curve_figure(curve), out_png)
    for row in summary[summary["label"] == MEAN_FOREGROUND].itertuples():
        log.info("n=%d: mean foreground Dice %.3f (SD %.3f, %d draws)", row.n, row.dice_mean, row.dice_sd, row.draws)
    return curve
