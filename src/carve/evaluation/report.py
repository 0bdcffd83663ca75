"""The run's report: seeds' table, metric box plots, training curves and costs, uncertainty against Dice,
configuration.

Figures are matplotlib :class:`~matplotlib.figure.Figure` objects built without pyplot (no global state), in
matplotlib's default style whatever the user's matplotlibrc says, at a fixed size and resolution.
:func:`png_bytes` leaves out the PNG 'Software' text (the only metadata matplotlib writes), so identical
inputs give byte-identical files and the manifest's checksums mean something.

Undefined values (NaN: e.g. the precision of an empty prediction) and infinite distances (one mask empty) are
left out of means, SDs and boxes; the number of cases of a row counts every case.
"""

from __future__ import annotations

import html
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from scipy import stats

from carve.imaging.io import atomic_write_bytes, atomic_write_text

SEEDS_METRICS = ("precision", "recall", "accuracy", "f1", "iou", "dice")
BOX_METRICS = ("dice", "iou", "f1", "precision", "recall", "accuracy", "nsd", "hd95_mm", "assd_mm")
UNCERTAINTY_SCORES = (  # the foreground case scores of uncertainty/{case}.tsv correlated with Dice
    "mean_normalised_entropy",
    "mean_member_entropy",
    "mean_mutual_information",
    "uncertain_foreground_fraction",
    "mean_std_foreground",
    "predicted_dice_foreground",  # an agreement score: higher = safer, a useful one has rho > 0
    "member_predicted_dice_foreground",  # likewise
)
SET_ORDER = ("cv", "test")
SET_COLOURS = {"cv": "#1f77b4", "test": "#d62728"}
MEAN_FOREGROUND = "mean_foreground"
FIGURE_COLUMNS = 4  # panels per row of the uncertainty-against-Dice figure
DPI = 100


@contextmanager
def plot_style() -> Iterator[None]:
    """matplotlib's default style, independent of the user's matplotlibrc."""
    with matplotlib.style.context("default"), matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10}):
        yield


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG without the 'Software' text: identical figures give identical bytes."""
    buffer = io.BytesIO()
    with plot_style():
        fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    return atomic_write_bytes(path, png_bytes(fig, dpi))


def _finite(values: pd.Series) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _sets(cases: pd.DataFrame) -> list[str]:
    present = set(cases["set"])
    return [s for s in SET_ORDER if s in present] + sorted(present - set(SET_ORDER))


def _labels(cases: pd.DataFrame) -> list[str]:
    """Label names in the order of their label values."""
    if "label_value" in cases.columns:
        order = cases.drop_duplicates("label").sort_values(["label_value", "label"])["label"]
        return [str(label) for label in order]
    return sorted(str(label) for label in cases["label"].unique())


def foreground_dice(cases: pd.DataFrame) -> pd.DataFrame:
    """Per case: its set and the mean Dice over its labels (``mean_foreground_dice``)."""
    per_case = cases.groupby(["case", "set"], sort=True)["dice"].mean().rename("mean_foreground_dice")
    return per_case.reset_index()


def seeds_table(cases: pd.DataFrame, metrics: Sequence[str] = SEEDS_METRICS) -> pd.DataFrame:
    """Mean and SD (ddof 1) of each metric per set and label, then per set over the cases' label means.

    ``cases`` is ``metrics/cases.tsv``: one row per case and label with ``case``, ``set``, ``label`` and the
    metrics. Sets in the order cv, test; labels in the order of their values, then ``mean_foreground``.
    """
    missing = [c for c in ("case", "set", "label", *metrics) if c not in cases.columns]
    if missing:
        raise ValueError(f"metrics table lacks the column(s) {', '.join(missing)}")
    rows = []
    for set_name in _sets(cases):
        in_set = cases[cases["set"] == set_name]
        groups = [(label, in_set[in_set["label"].astype(str) == label]) for label in _labels(in_set)]
        groups.append((MEAN_FOREGROUND, in_set.groupby("case")[list(metrics)].mean(numeric_only=True)))
        for label, group in groups:
            row: dict[str, Any] = {"set": set_name, "label": label, "cases": len(group)}
            for m in metrics:
                values = _finite(group[m])
                row[f"{m}_mean"] = float(values.mean()) if values.size else float("nan")
                row[f"{m}_sd"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def mean_sd_text(mean: float, sd: float, digits: int = 3) -> str:
    """``0.812 ± 0.034``; the mean alone when the SD is undefined, ``n/a`` when the mean is."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seeds_table_html(table: pd.DataFrame, metrics: Sequence[str] = SEEDS_METRICS) -> str:
    """A small self-contained HTML page of the table with ``mean ± SD`` cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("set", "label", "cases", *metrics))
    body = []
    for _, row in table.iterrows():
        cells = [html.escape(str(row["set"])), html.escape(str(row["label"])), str(int(row["cases"]))]
        cells += [mean_sd_text(row[f"{m}_mean"], row[f"{m}_sd"]) for m in metrics]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:nth-child(-n+2),th{text-align:left}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>carve: seeds table</title>'
        f"<style>{style}</style></head><body>\n"
        "<p>Mean ± SD over cases (SD with n - 1; undefined values left out).</p>\n"
        f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>\n</body></html>\n"
    )


def metrics_boxplots(cases: pd.DataFrame, metrics: Sequence[str] = BOX_METRICS) -> Figure:
    """One panel per metric: a box per label and set, with every case as a point."""
    metrics = [m for m in metrics if m in cases.columns]
    labels, sets = _labels(cases), _sets(cases)
    n_cols = 3
    n_rows = max(1, -(-len(metrics) // n_cols))
    width = 0.8 / max(len(sets), 1)
    with plot_style():
        fig = Figure(figsize=(4.0 * n_cols, 3.0 * n_rows + 0.6), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
        for ax, metric in zip(axes, metrics, strict=False):
            for j, set_name in enumerate(sets):
                offset = (j - (len(sets) - 1) / 2) * width
                for i, label in enumerate(labels):
                    group = cases[(cases["set"] == set_name) & (cases["label"].astype(str) == label)]
                    values = _finite(group.sort_values("case")[metric])
                    if values.size == 0:
                        continue
                    colour = SET_COLOURS.get(set_name, "0.4")
                    box = ax.boxplot(
                        values,
                        positions=[i + offset],
                        widths=width * 0.8,
                        patch_artist=True,
                        showfliers=False,
                        manage_ticks=False,
                    )
                    for patch in box["boxes"]:
                        patch.set(facecolor=colour, alpha=0.25, edgecolor=colour)
                    for part in ("medians", "whiskers", "caps"):
                        for line in box[part]:
                            line.set_color(colour)
                    jitter = np.linspace(-0.25, 0.25, values.size) * width if values.size > 1 else np.zeros(1)
                    ax.scatter(i + offset + jitter, values, s=12, color=colour, zorder=3)
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.set_title(metric)
            ax.grid(axis="y", alpha=0.3)
        for ax in axes[len(metrics) :]:
            ax.set_axis_off()
        handles = [Patch(color=SET_COLOURS.get(s, "0.4"), alpha=0.5, label=s) for s in sets]
        fig.legend(handles=handles, loc="outside upper center", ncols=max(len(sets), 1))
    return fig


def training_curves_figure(curves: Mapping[int, pd.DataFrame], label_names: Mapping[int, str]) -> Figure:
    """Training loss, validation Dice per label and learning rate against epoch, one colour per fold."""
    colours = matplotlib.colormaps["tab10"]
    styles = ("-", "--", ":", "-.")
    with plot_style():
        fig = Figure(figsize=(13.0, 4.0), layout="constrained")
        loss_ax, dice_ax, lr_ax = fig.subplots(1, 3)
        names: dict[int, str] = {}
        for k, (fold, table) in enumerate(sorted(curves.items())):
            colour = colours(k % 10)
            loss_ax.plot(table["epoch"], table["train_loss"], color=colour, marker=".", label=f"fold {fold}")
            lr_ax.plot(table["epoch"], table["lr"], color=colour, marker=".")
            prefix = "val_dice_"
            values = sorted(int(c.removeprefix(prefix)) for c in table.columns if c.startswith(prefix))
            for j, value in enumerate(values):
                style = styles[j % len(styles)]
                dice = table[f"{prefix}{value}"]
                dice_ax.plot(table["epoch"], dice, color=colour, linestyle=style, marker=".")
                names[value] = label_names.get(value, f"label {value}")
        loss_ax.set(title="training loss", xlabel="epoch", ylabel="Dice + cross-entropy")
        dice_ax.set(title="validation Dice", xlabel="epoch", ylim=(-0.02, 1.02))
        lr_ax.set(title="learning rate", xlabel="epoch", yscale="log")
        for ax in (loss_ax, dice_ax, lr_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if curves:
            loss_ax.legend(loc="upper right")
            handles = [
                Line2D([], [], color="k", linestyle=styles[j % len(styles)], label=name)
                for j, (_, name) in enumerate(sorted(names.items()))
            ]
            dice_ax.legend(handles=handles, loc="best")
    return fig


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its p-value (scipy); NaN for fewer than 3 pairs or constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def spearman_text(rho: float, p_value: float, n: int) -> str:
    if not np.isfinite(rho):
        return f"Spearman ρ n/a (n = {n})"
    return f"Spearman ρ = {rho:.3f} (p = {p_value:.2g}, n = {n})"


def uncertainty_against_dice(cases: pd.DataFrame, scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per evaluated case: mean foreground Dice and uncertainty scores; per score: Spearman's ρ against Dice.

    Cases with an empty prediction (``foreground_voxels == 0``, their scores are 0 by definition) are kept in
    the per-case table but left out of the correlations.
    """
    scores = scores.drop(columns=["set"], errors="ignore")
    per_case = foreground_dice(cases).merge(scores, on="case", how="left")
    score_columns = [c for c in scores.columns if c != "case"]
    lacking = sorted(per_case.loc[per_case[score_columns].isna().all(axis=1), "case"])
    if lacking:
        raise ValueError(f"no uncertainty scores for the evaluated case(s) {', '.join(lacking)}")
    empty = per_case["foreground_voxels"].eq(0) if "foreground_voxels" in per_case else False
    per_case["empty_prediction"] = empty
    rows = []
    for score in (s for s in UNCERTAINTY_SCORES if s in per_case.columns):
        used = per_case[~per_case["empty_prediction"]].dropna(subset=[score, "mean_foreground_dice"])
        rho, p_value = spearman(used[score], used["mean_foreground_dice"])
        rows.append({"score": score, "cases": len(used), "spearman_rho": rho, "p_value": p_value})
    return per_case, pd.DataFrame(rows, columns=["score", "cases", "spearman_rho", "p_value"])


def uncertainty_figure(per_case: pd.DataFrame, correlations: pd.DataFrame) -> Figure:
    """One panel per score: the case's score against its mean foreground Dice, ρ in the title."""
    n = max(len(correlations), 1)
    columns = min(n, FIGURE_COLUMNS)
    rows = -(-n // columns)
    with plot_style():
        fig = Figure(figsize=(3.8 * columns, 3.8 * rows), layout="constrained")
        axes = fig.subplots(rows, columns, squeeze=False).ravel()
        for ax in axes[n:]:
            ax.set_visible(False)
        for ax, (_, row) in zip(axes, correlations.iterrows(), strict=False):
            for set_name in _sets(per_case):
                for empty, marker in ((False, "o"), (True, "x")):
                    part = per_case[(per_case["set"] == set_name) & (per_case["empty_prediction"] == empty)]
                    if len(part):
                        label = f"{set_name}, empty prediction (left out)" if empty else set_name
                        ax.scatter(
                            part["mean_foreground_dice"],
                            part[row["score"]],
                            marker=marker,
                            s=20,
                            color=SET_COLOURS.get(set_name, "0.4"),
                            label=label,
                        )
            correlation = spearman_text(row["spearman_rho"], row["p_value"], row["cases"])
            ax.set_title(f"{row['score']}\n{correlation}")
            ax.set(xlabel="mean foreground Dice", ylabel=row["score"], xlim=(-0.02, 1.02))
            ax.grid(alpha=0.3)
        axes[0].legend(loc="best", fontsize=7)
    return fig


def read_uncertainty_scores(paths: Sequence[Path]) -> pd.DataFrame:
    tables = [pd.read_csv(p, sep="\t") for p in paths]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["case"])


def configuration_documents(config: Mapping[str, Any], plans: Mapping[str, Any]) -> tuple[str, str]:
    """The resolved configuration as YAML (usable with --configfile), and an HTML page of it and the plans."""
    config = dict(config)
    if isinstance(config.get("labels"), Mapping):  # label values as numbers, as users write them
        config["labels"] = {int(k) if str(k).isdigit() else k: v for k, v in config["labels"].items()}
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    plans_yaml = yaml.safe_dump(_plain(plans), sort_keys=False, allow_unicode=True)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>carve: configuration</title></head>'
        '<body style="font-family:sans-serif">\n<h2>Configuration (resolved, with defaults)</h2>\n'
        f"<pre>{html.escape(config_yaml)}</pre>\n"
        f"<h2>Plans (plans.json)</h2>\n<pre>{html.escape(plans_yaml)}</pre>\n"
        "</body></html>\n"
    )
    return config_yaml, page


def _plain(value: Any) -> Any:
    """Plain dicts, lists and scalars (YAML's safe dumper refuses Snakemake's containers)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, int) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def training_summary(stages: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per training job: how it trained and what it cost. Each stage gives ``stage`` (``final``: the run's
    models; ``teacher round r``: self-training's earlier rounds), ``fold``, its resolved ``config`` (the fold's
    ``config.json``), ``benchmark`` (Snakemake's record of the job: ``s`` wall seconds, ``cpu_time`` CPU seconds)
    and ``pseudo`` (the pseudo-label table it learnt from, or None).

    Columns: stage, fold, method (``supervised`` or the semi-supervised method), labelled training cases,
    unlabelled images, the mean share of pseudo-label voxels kept, iterations, precision, wall and CPU minutes, the
    saved model's final mean validation Dice, and with a mean teacher the network's beside the teacher's."""
    rows = []
    for entry in stages:
        config, bench, pseudo = entry["config"], entry.get("benchmark") or {}, entry.get("pseudo")
        semi = config.get("semi_supervised") or {}
        rows.append(
            {
                "stage": entry["stage"],
                "fold": int(entry["fold"]),
                "method": semi.get("method", "supervised"),
                "labelled_cases": len(config.get("train_cases") or []),
                "unlabelled_images": len(semi.get("unlabelled_cases") or []),
                "pseudo_kept": float(pseudo["kept_fraction"].mean()) if pseudo is not None else float("nan"),
                "iterations": config.get("train", {}).get("iterations"),
                "precision": config.get("runtime", {}).get("precision"),
                "wall_min": float(bench["s"]) / 60 if "s" in bench else float("nan"),
                "cpu_min": float(bench["cpu_time"]) / 60 if "cpu_time" in bench else float("nan"),
                "val_dice": _nan_mean(config.get("val_dice")),
                "student_val_dice": _nan_mean(semi["student_val_dice"]) if "student_val_dice" in semi else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _nan_mean(values: Any) -> float:
    finite = [float(v) for v in values or [] if v is not None and np.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def training_summary_html(table: pd.DataFrame, unlabelled: Sequence[str]) -> str:
    """The training summary as a page: the per-fold table, the totals, and which images were unlabelled."""
    wall, cpu = table["wall_min"].sum(), table["cpu_min"].sum()
    totals = f"{len(table)} training job(s): {wall:.1f} min wall clock, {cpu:.1f} CPU min (training jobs only)"
    methods = sorted(set(table["method"]))
    if methods == ["supervised"]:
        about = "<p>Supervised training on the labelled cases only.</p>"
    else:
        about = (
            "<p>Semi-supervised (" + html.escape(", ".join(methods)) + f"): {len(unlabelled)} image(s) read without "
            "labels, never segmented nor evaluated. A mean teacher saves the teacher (the exponential moving average "
            "of the network); <code>student_val_dice</code> is the network's validation Dice beside it. "
            "Self-training's students learn from their own fold's teacher; <code>pseudo_kept</code> is the mean share "
            "of pseudo-label voxels confident enough to count.</p>"
        )
        if unlabelled:
            about += "<p>Unlabelled images: " + html.escape(", ".join(unlabelled)) + "</p>"
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>carve: training</title></head>'
        '<body style="font-family:sans-serif">\n<h2>Training per fold</h2>\n'
        + table.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
        + f"\n<p>{html.escape(totals)}</p>\n{about}\n</body></html>\n"
    )


# File-level steps (the Snakemake adapters call these).


def write_seeds_table(cases_path: Path, out_tsv: Path, out_html: Path) -> pd.DataFrame:
    table = seeds_table(pd.read_csv(cases_path, sep="\t"))
    atomic_write_text(out_tsv, table.to_csv(sep="\t", index=False, float_format="%.6g"))
    atomic_write_text(out_html, seeds_table_html(table))
    return table


def write_metrics_boxplots(cases_path: Path, out: Path) -> Path:
    return save_png(metrics_boxplots(pd.read_csv(cases_path, sep="\t")), out)


def write_training_curves(curves_paths: Mapping[int, Path], labels: Mapping[int, str], out: Path) -> Path:
    curves = {fold: pd.read_csv(path, sep="\t") for fold, path in curves_paths.items()}
    return save_png(training_curves_figure(curves, labels), out)


def write_uncertainty_plot(cases_path: Path, scores: Sequence[Path], png: Path, tsv: Path) -> pd.DataFrame:
    cases = pd.read_csv(cases_path, sep="\t")
    per_case, correlations = uncertainty_against_dice(cases, read_uncertainty_scores(scores))
    save_png(uncertainty_figure(per_case, correlations), png)
    atomic_write_text(tsv, correlations.to_csv(sep="\t", index=False, float_format="%.6g"))
    return correlations


def write_configuration(config: Mapping[str, Any], plans_path: Path, out_yaml: Path, out_html: Path) -> None:
    import json

    config_yaml, page = configuration_documents(config, json.loads(Path(plans_path).read_text()))
    atomic_write_text(out_yaml, config_yaml)
    atomic_write_text(out_html, page)


def write_training_summary(stages: Sequence[Mapping[str, Any]], out_tsv: Path, out_html: Path) -> pd.DataFrame:
    """Rule ``summarise_training``: :func:`training_summary` as a TSV and an HTML page; ``stages`` name the files
    (``config``, ``benchmark``, ``pseudo_labels``: a folder of :mod:`carve.prediction.pseudo_labels`, or None)."""
    import json

    read = []
    for stage in stages:
        records = pd.read_csv(stage["benchmark"], sep="\t").to_dict("records")
        folder = stage.get("pseudo_labels")
        read.append(
            {
                "stage": stage["stage"],
                "fold": stage["fold"],
                "config": json.loads(Path(stage["config"]).read_text()),
                "benchmark": records[-1] if records else {},
                "pseudo": pd.read_csv(Path(folder) / "pseudo_labels.tsv", sep="\t") if folder else None,
            }
        )
    table = training_summary(read)
    unlabelled = sorted(
        {c for r in read for c in (r["config"].get("semi_supervised") or {}).get("unlabelled_cases") or []}
    )
    atomic_write_text(out_tsv, table.to_csv(sep="\t", index=False, float_format="%.6g"))
    atomic_write_text(out_html, training_summary_html(table, unlabelled))
    return table
