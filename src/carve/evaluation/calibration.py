"""How good is the uncertainty? Calibration, uncertainty-error overlap and case ranking on cross-validation.

Every training case has a raw cross-validation prediction (``cv_raw/``: the argmax of the held-out fold's
probabilities, before postprocessing), a reference and the voxel maps of :mod:`carve.prediction.predict`. Per case,
:func:`assess_case` reduces them to small count tables; :func:`summarise_assessment` pools them:

* **Calibration** of the confidence (the largest class probability, stored as ``round(255 p)``): voxels are
  binned by confidence (:data:`RELIABILITY_BINS` equal bins on [0, 1]); per bin the accuracy (fraction of voxels
  whose predicted label is the reference's) is compared with the mean confidence. The expected calibration
  error is ``ECE = sum_b (n_b / N) |accuracy_b - confidence_b|``, the maximum calibration error ``MCE`` the
  largest gap of a non-empty bin. Two regions: ``all`` voxels (dominated by easy background) and the
  ``foreground_region``: predicted or reference foreground, dilated by one voxel (face connectivity).
* **Uncertainty-error overlap**: the Dice between the voxels whose uncertainty is at least a threshold and
  the error voxels (prediction != reference), for thresholds 0.05 ... 0.95 (:data:`THRESHOLDS`), of three
  maps scaled to [0, 1]: normalised entropy, mutual information / log(n_classes), and
  (1 - confidence) / (1 - 1 / n_classes). Pooled over cases (sums of voxel counts), and as a mean of cases.
* **Case ranking**: Spearman's rank correlation between each per-case score (``uncertainty/{case}.tsv``) and the
  case's mean foreground Dice (``metrics/cases.tsv``, set cv); a useful uncertainty score has a negative rho, a
  useful agreement score (``predicted_dice_*``: higher = safer) a positive one.
* **Failure detection** (:func:`failure_detection`): per score, the AURC of its risk-coverage curve against the
  random and optimal references and the AUROC of flagging the cases with Dice below a threshold
  (:mod:`carve.evaluation.failure`), with a figure of the best scores' curves.
  :func:`review_list` ranks every case by one score and flags those at or above a quantile of the
  cross-validation cases' scores, and every case with an empty prediction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import ndimage

from carve.errors import InputError
from carve.evaluation.failure import (
    TABLE_COLUMNS,
    failure_detection_table,
    risk_coverage_curves,
    risk_coverage_figure,
    risk_score,
    score_columns,
    score_direction,
)
from carve.evaluation.report import UNCERTAINTY_SCORES, plot_style, save_png, spearman
from carve.imaging.io import atomic_write_text, read_image

RELIABILITY_BINS = 10
THRESHOLD_STEP = 0.05
THRESHOLDS = tuple(round(THRESHOLD_STEP * i, 2) for i in range(1, round(1 / THRESHOLD_STEP)))
REGIONS = ("all", "foreground_region")
MAPS = ("normalised_entropy", "mutual_information", "one_minus_confidence")
CONFIDENCE_SCALE = 255  # confidence maps are uint8: round(255 * p)
RELIABILITY_COLUMNS = ["region", "lower", "upper", "voxels", "confidence_sum", "correct"]
ERROR_COLUMNS = ["map", "threshold", "uncertain_voxels", "error_voxels", "overlap_voxels", "dice"]
SCORES = UNCERTAINTY_SCORES  # the case scores correlated with Dice
RISK_COVERAGE_CURVES = 3  # scores drawn in the risk-coverage figure: the best by AURC


def reliability_counts(confidence: np.ndarray, correct: np.ndarray, bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Per confidence bin (equal width on [0, 1], the last closed): voxels, summed confidence, correct voxels."""
    confidence = np.asarray(confidence, dtype=np.float32).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence {confidence.shape} and correct {correct.shape} differ in shape")
    voxels, edges = np.histogram(confidence, bins=bins, range=(0.0, 1.0))
    confidence_sum, _ = np.histogram(confidence, bins=bins, range=(0.0, 1.0), weights=confidence)
    correct_sum, _ = np.histogram(confidence[correct], bins=bins, range=(0.0, 1.0))
    return pd.DataFrame(
        {"lower": edges[:-1], "upper": edges[1:], "voxels": voxels, "confidence_sum": confidence_sum}
        | {"correct": correct_sum}
    )


def calibration_errors(bins: pd.DataFrame) -> dict[str, float]:
    """ECE and MCE from :func:`reliability_counts` (summed over cases if pooled); NaN for no voxels."""
    n = bins["voxels"].to_numpy(dtype=float)
    total = n.sum()
    if total == 0:
        return {"voxels": 0.0, "accuracy": np.nan, "mean_confidence": np.nan, "ece": np.nan, "mce": np.nan}
    used = n > 0
    gap = np.abs(bins["correct"].to_numpy(float)[used] - bins["confidence_sum"].to_numpy(float)[used]) / n[used]
    return {
        "voxels": float(total),
        "accuracy": float(bins["correct"].sum() / total),
        "mean_confidence": float(bins["confidence_sum"].sum() / total),
        "ece": float((n[used] / total * gap).sum()),
        "mce": float(gap.max()),
    }


def threshold_counts(uncertainty: np.ndarray, error: np.ndarray) -> pd.DataFrame:
    """For each threshold t of :data:`THRESHOLDS`: voxels with uncertainty >= t, error voxels, and both."""
    uncertainty = np.asarray(uncertainty, dtype=np.float32).ravel()
    error = np.asarray(error, dtype=bool).ravel()
    n_bins = len(THRESHOLDS) + 1
    every, _ = np.histogram(uncertainty, bins=n_bins, range=(0.0, 1.0))
    wrong, _ = np.histogram(uncertainty[error], bins=n_bins, range=(0.0, 1.0))
    at_least = np.cumsum(every[::-1])[::-1][1:]  # bin i+1 starts at THRESHOLDS[i]
    overlap = np.cumsum(wrong[::-1])[::-1][1:]
    over_one = int(np.count_nonzero(uncertainty > 1.0))  # out of range: counted as maximal
    over_one_wrong = int(np.count_nonzero(uncertainty[error] > 1.0))
    return pd.DataFrame(
        {
            "threshold": THRESHOLDS,
            "uncertain_voxels": at_least + over_one,
            "error_voxels": int(np.count_nonzero(error)),
            "overlap_voxels": overlap + over_one_wrong,
        }
    )


def _dice(overlap: pd.Series | float, uncertain: pd.Series | float, errors: pd.Series | float):
    total = np.asarray(uncertain, dtype=float) + np.asarray(errors, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * np.asarray(overlap, dtype=float) / total, 1.0)


def assess_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    confidence: np.ndarray,
    normalised_entropy: np.ndarray,
    mutual_information: np.ndarray,
    n_classes: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability counts per region and threshold counts per map of one case (see module docstring).

    ``confidence`` is the largest class probability in [0, 1]; ``mutual_information`` in nats.
    """
    shapes = {np.shape(a) for a in (reference, prediction, confidence, normalised_entropy, mutual_information)}
    if len(shapes) != 1:
        raise ValueError(f"the maps of a case differ in shape: {sorted(shapes)}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    correct = np.asarray(reference) == np.asarray(prediction)
    foreground = (np.asarray(reference) > 0) | (np.asarray(prediction) > 0)
    region = ndimage.binary_dilation(foreground, structure=ndimage.generate_binary_structure(3, 1))
    reliability = []
    for name, mask in (("all", None), ("foreground_region", region)):
        conf, corr = (confidence, correct) if mask is None else (confidence[mask], correct[mask])
        reliability.append(reliability_counts(conf, corr).assign(region=name))
    error = ~correct
    del correct
    scaled = {
        "normalised_entropy": lambda: normalised_entropy,
        "mutual_information": lambda: np.asarray(mutual_information, np.float32) / np.float32(np.log(n_classes)),
        "one_minus_confidence": lambda: (1.0 - np.asarray(confidence, np.float32)) / np.float32(1.0 - 1.0 / n_classes),
    }
    table = pd.concat([threshold_counts(scaled[m](), error).assign(map=m) for m in MAPS], ignore_index=True)
    table["dice"] = _dice(table["overlap_voxels"], table["uncertain_voxels"], table["error_voxels"])
    return pd.concat(reliability, ignore_index=True)[RELIABILITY_COLUMNS], table[ERROR_COLUMNS]


def assess_case_files(
    prediction: Path,
    reference: Path,
    confidence: Path,
    normalised_entropy: Path,
    mutual_information: Path,
    n_classes: int,
    out_reliability: Path,
    out_errors: Path,
) -> None:
    """:func:`assess_case` on a case's files (the confidence map stored as uint8, ``round(255 p)``)."""
    arrays = [read_image(p)[0] for p in (reference, prediction, confidence, normalised_entropy, mutual_information)]
    arrays[2] = arrays[2].astype(np.float32) / np.float32(CONFIDENCE_SCALE)
    reliability, errors = assess_case(*arrays, n_classes=n_classes)
    _write(out_reliability, reliability)
    _write(out_errors, errors)


def _write(path: Path, table: pd.DataFrame) -> None:
    atomic_write_text(path, table.to_csv(sep="\t", index=False, float_format="%.6g"))


def summarise_assessment(
    reliability: Mapping[str, pd.DataFrame], errors: Mapping[str, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-case tables (keyed by case) to: calibration per region, pooled reliability bins, error overlap."""
    if not reliability or not errors:
        raise ValueError("the uncertainty assessment needs at least one cross-validation case")
    bins = pd.concat([t.assign(case=c) for c, t in reliability.items()], ignore_index=True)
    calibration, pooled_bins = [], []
    for region in REGIONS:
        in_region = bins[bins["region"] == region]
        pooled = in_region.groupby(["lower", "upper"], as_index=False)[["voxels", "confidence_sum", "correct"]].sum()
        pooled_bins.append(pooled.assign(region=region))
        per_case = [calibration_errors(t)["ece"] for _, t in in_region.groupby("case")]
        finite = np.asarray([e for e in per_case if np.isfinite(e)])
        calibration.append(
            {"region": region, "cases": len(per_case), **calibration_errors(pooled)}
            | {"ece_case_mean": finite.mean() if finite.size else np.nan}
            | {"ece_case_sd": finite.std(ddof=1) if finite.size > 1 else np.nan}
        )
    table = pd.concat([t.assign(case=c) for c, t in errors.items()], ignore_index=True)
    keys = ["map", "threshold"]
    counts = table.groupby(keys, as_index=False)[["uncertain_voxels", "error_voxels", "overlap_voxels"]].sum()
    counts["dice_pooled"] = _dice(counts["overlap_voxels"], counts["uncertain_voxels"], counts["error_voxels"])
    counts = counts.merge(table.groupby(keys, as_index=False)["dice"].mean().rename(columns={"dice": "dice_case_mean"}))
    counts["best"] = False  # the (lowest) threshold of highest pooled Dice, per map
    counts.loc[counts.groupby("map")["dice_pooled"].idxmax(), "best"] = True
    reliability_table = pd.concat(pooled_bins, ignore_index=True)[RELIABILITY_COLUMNS]
    return pd.DataFrame(calibration), reliability_table, counts


def score_correlations(scores: pd.DataFrame, dice: pd.Series) -> pd.DataFrame:
    """Spearman's rho of each score against mean foreground Dice over the cases in ``dice`` (non-empty ones)."""
    per_case = scores.set_index("case").join(dice.rename("dice"), how="inner")
    used = per_case[per_case.get("foreground_voxels", pd.Series(1.0, index=per_case.index)) > 0]
    rows = []
    for score in (s for s in SCORES if s in per_case.columns):
        rho, p_value = spearman(used[score], used["dice"])
        rows.append({"score": score, "cases": len(used), "spearman_rho": rho, "p_value": p_value})
    return pd.DataFrame(rows, columns=["score", "cases", "spearman_rho", "p_value"])


def _non_empty(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows with a non-empty prediction (``foreground_voxels > 0``; every row without that column)."""
    return scores[scores["foreground_voxels"] > 0] if "foreground_voxels" in scores.columns else scores


def failure_detection(
    scores: pd.DataFrame, dice: pd.Series, dice_threshold: float, curves: int = RISK_COVERAGE_CURVES
) -> tuple[pd.DataFrame, Figure]:
    """Case-level failure detection on cross-validation: the metrics of every score and the best ones' curves.

    ``scores`` holds the rows of the uncertainty tables (``case``, ``members``, the scores, ``foreground_voxels``)
    of the cases to assess; ``dice`` is their mean foreground Dice, indexed by case. Cases with an empty prediction
    (``foreground_voxels == 0``: scores 0 by definition) are left out, as in :func:`score_correlations`. Returns
    :func:`carve.evaluation.failure.failure_detection_table` with failure meaning Dice < ``dice_threshold`` (best
    AURC first), and :func:`carve.evaluation.failure.risk_coverage_figure` of the ``curves`` scores of lowest AURC
    (oriented so that higher = riskier), with the random and optimal references of the cases left in. With no case
    left, every score has a row of 0 cases and NaN metrics, and the figure no curve.

    Raises InputError for a threshold outside [0, 1] and for malformed tables (see the table's function).
    """
    if not 0.0 <= dice_threshold <= 1.0:
        raise InputError(f"evaluate.failure_dice_threshold must be in [0, 1], got {dice_threshold}")
    used = _non_empty(scores)
    if used.empty:
        names = score_columns(scores)
        rows = [{"score": n, "direction": score_direction(n), "cases": 0, "failures": 0} for n in names]
        empty = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        return empty, risk_coverage_figure({}, [], title="risk-coverage of cross-validation (no non-empty case)")
    table = failure_detection_table(used, dice, dice_threshold)
    best = table.loc[np.isfinite(table["aurc"].to_numpy(float)), "score"].head(curves).tolist()
    cases_dice = dice[dice.index.isin(used["case"])].astype(float)
    title = f"risk-coverage of cross-validation ({cases_dice.notna().sum()} cases, best {len(best)} scores by AURC)"
    figure = risk_coverage_figure(risk_coverage_curves(used, dice, best), cases_dice, title=title)
    return table, figure


def case_dice(cases: pd.DataFrame, set_name: str | None = None) -> pd.Series:
    """Mean Dice over labels per case (of one set, or of all)."""
    if set_name is not None:
        cases = cases[cases["set"] == set_name]
    return cases.groupby("case")["dice"].mean().rename("mean_foreground_dice")


def review_list(
    scores: pd.DataFrame, cv_cases: Sequence[str], dice: pd.Series, score: str, quantile: float
) -> pd.DataFrame:
    """Every case ranked by ``score`` (riskiest first; empty predictions on top), with a review flag.

    The score is read in its direction (:func:`carve.evaluation.failure.score_direction`): an uncertainty score as
    it is (highest first), an agreement score such as ``predicted_dice_foreground`` turned round (lowest first).
    A case is flagged when its prediction is empty, or when its risk is at least the ``quantile`` of the
    cross-validation cases' risks (non-empty predictions with a finite score; the threshold is in the
    ``threshold`` column in the score's own units, compared with ``>=`` or ``<=`` as ``reason`` says).
    ``cv_percentile`` is the fraction of those cross-validation cases with a lower risk. A case without the score
    (NaN) is ranked last and not flagged for it.
    """
    if score not in scores.columns:
        raise InputError(f"no score '{score}' in the uncertainty tables (have {', '.join(scores.columns[1:])})")
    if not 0.0 <= quantile <= 1.0:
        raise InputError(f"the review quantile must be in [0, 1], got {quantile}")
    table = scores[["case", score, "foreground_voxels"]].copy()
    table["set"] = np.where(table["case"].isin(list(cv_cases)), "cv", "test")
    empty = table["foreground_voxels"].eq(0)
    risk = risk_score(score, table[score].to_numpy(dtype=float))
    usable = np.isfinite(risk)
    reference = np.sort(risk[table["set"].eq("cv").to_numpy() & ~empty.to_numpy() & usable])
    threshold = float(np.quantile(reference, quantile)) if reference.size else np.nan
    table["cv_percentile"] = np.searchsorted(reference, risk, side="left") / max(reference.size, 1)
    table.loc[~usable, "cv_percentile"] = np.nan
    table["review"] = empty | pd.Series(usable & (risk >= threshold), index=table.index)
    safer = score_direction(score) == "higher_is_safer"
    compare = "<=" if safer else ">="
    table["reason"] = np.where(empty, "empty prediction", np.where(table["review"], f"{score} {compare} threshold", ""))
    table["threshold"] = -threshold if safer else threshold
    table = table.merge(dice.rename("mean_foreground_dice"), left_on="case", right_index=True, how="left")
    table = table.assign(_empty=empty, _risk=np.where(usable, risk, -np.inf))
    table = table.sort_values(["_empty", "_risk", "case"], ascending=[False, False, True])
    table.insert(0, "rank", range(1, len(table) + 1))
    columns = ["rank", "case", "set", score, "cv_percentile", "review", "reason", "threshold"]
    return table[columns + ["mean_foreground_dice", "foreground_voxels"]].reset_index(drop=True)


# The case-level scores `predict.review_score: auto` picks from: those whose expectation does not depend on the number
# of members, so that a score measured on cross-validation cases (one fold's members) means the same on a test case
# (every fold's). The ensemble's own scores (entropy of the mean, mutual information, std, pairwise Dice, predicted
# Dice of the mean) shift with the number of members and are measured, not chosen (docs/uncertainty.md).
REVIEW_CANDIDATES = ("mean_member_entropy", "member_predicted_dice_foreground")
DEFAULT_REVIEW_SCORE = "mean_member_entropy"  # where cross-validation cannot decide


def choose_review_score(failures: pd.DataFrame, scores: pd.DataFrame, configured: str) -> dict[str, object]:
    """The score that ranks the review list, and why (``assessment/review_score.json``).

    ``configured`` other than ``auto`` is used as it is. ``auto``: of :data:`REVIEW_CANDIDATES`, the one with the
    lowest AURC on the run's cross-validation (``failures``: :func:`failure_detection`'s table, best first), among
    those that every case has (finite in ``scores``), so that test cases are ranked on the same scale; when none has
    an AURC (too few cases, or every Dice equal), :data:`DEFAULT_REVIEW_SCORE`."""
    if configured != "auto":
        return {"score": configured, "chosen_by": "config (predict.review_score)"}
    defined = {c for c in REVIEW_CANDIDATES if c in scores.columns and np.isfinite(scores[c].to_numpy(float)).all()}
    rows = failures[failures["score"].isin(defined) & np.isfinite(failures["aurc"].to_numpy(float))]
    if rows.empty:
        return {
            "score": DEFAULT_REVIEW_SCORE,
            "chosen_by": "default: no candidate score has an AURC on the cross-validation cases",
        }
    best = rows.sort_values(["aurc", "auroc", "score"], ascending=[True, False, True], na_position="last").iloc[0]
    return {
        "score": str(best["score"]),
        "chosen_by": "lowest AURC on the cross-validation cases (assessment/failure_detection.tsv)",
        "aurc": float(best["aurc"]),
        "aurc_random": float(best["aurc_random"]),
        "aurc_optimal": float(best["aurc_optimal"]),
        "cases": int(best["cases"]),
        "candidates": sorted(defined),
    }


def reliability_figure(calibration: pd.DataFrame, bins: pd.DataFrame, overlap: pd.DataFrame) -> Figure:
    """Reliability diagram, confidence histogram and uncertainty-error Dice against threshold."""
    colours = {"all": "#7f7f7f", "foreground_region": "#1f77b4"}
    with plot_style():
        fig = Figure(figsize=(13.0, 4.0), layout="constrained")
        diagram, histogram, dice_ax = fig.subplots(1, 3)
        diagram.plot([0, 1], [0, 1], color="k", linestyle=":", linewidth=1, label="perfect calibration")
        for region in REGIONS:
            part = bins[(bins["region"] == region) & (bins["voxels"] > 0)]
            row = calibration.set_index("region").loc[region]
            centre = (part["lower"] + part["upper"]) / 2
            label = f"{region}: ECE {row['ece']:.3f}, MCE {row['mce']:.3f}"
            colour = colours[region]
            accuracy, confidence = part["correct"] / part["voxels"], part["confidence_sum"] / part["voxels"]
            diagram.plot(confidence, accuracy, marker="o", color=colour, label=label)
            fraction, width = part["voxels"] / part["voxels"].sum(), (part["upper"] - part["lower"]) * 0.9
            histogram.bar(centre, fraction, width=width, color=colour, alpha=0.5, label=region)
        diagram.set(title="reliability (cross-validation voxels)", xlabel="mean confidence", ylabel="accuracy")
        diagram.set(xlim=(0, 1.02), ylim=(0, 1.02))
        histogram.set(title="confidence", xlabel="confidence (bin)", ylabel="fraction of voxels", yscale="log")
        for name, part in overlap.groupby("map", sort=False):
            dice_ax.plot(part["threshold"], part["dice_pooled"], marker=".", label=name)
        dice_ax.set(title="uncertain voxels vs errors", xlabel="threshold (scaled to [0, 1])", ylabel="Dice")
        dice_ax.set(xlim=(0, 1), ylim=(0, 1.02))
        for ax in (diagram, histogram, dice_ax):
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=7)
    return fig


def maps_figure(image: np.ndarray, labels: np.ndarray, maps: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """One slice (the one with the most foreground) of the image, the labels and each voxel map (with the labels'
    outlines), side by side."""
    index = int(np.argmax((np.asarray(labels) > 0).sum(axis=(1, 2)))) if np.any(labels) else labels.shape[0] // 2
    panels = [("image", image[index], "gray"), ("labels", labels[index], "tab10")]
    panels += [(name, array[index], "magma") for name, array in maps.items()]
    with plot_style():
        fig = Figure(figsize=(2.6 * len(panels), 2.9), layout="constrained")
        for ax, (name, plane, cmap) in zip(fig.subplots(1, len(panels), squeeze=False).ravel(), panels, strict=True):
            limits = {"vmin": 0, "vmax": 9} if name == "labels" else {}
            shown = ax.imshow(plane, cmap=cmap, interpolation="nearest", **limits)
            if name not in ("image", "labels"):
                fig.colorbar(shown, ax=ax, shrink=0.7)
                for value in np.unique(labels[index])[1:]:  # the predicted labels' outlines
                    ax.contour(labels[index] == value, levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_title(name, fontsize=8)
            ax.set_axis_off()
        if title:
            fig.suptitle(f"{title}, slice {index}")
    return fig


def write_maps_figure(results: Path, case: str, out: Path) -> Path:
    """:func:`maps_figure` of one case of a run's ``results`` folder (its final labels and every map)."""
    results = Path(results)
    image = read_image(results / "nifti" / case / "image.nii.gz")[0]
    folder = "cv" if (results / "cv" / f"{case}.nii.gz").is_file() else "predictions"
    labels = read_image(results / folder / f"{case}.nii.gz")[0]
    maps = {"normalised entropy": read_image(results / "uncertainty" / f"{case}.nii.gz")[0]}
    for path in sorted((results / "uncertainty" / case).glob("*.nii.gz")):
        name, array = path.name.removesuffix(".nii.gz"), read_image(path)[0]
        maps[name.replace("_", " ")] = array / CONFIDENCE_SCALE if name == "confidence" else array
    return save_png(maps_figure(image, labels, maps, title=case), out)


def summarise_assessment_files(
    reliability_paths: Sequence[Path],
    error_paths: Sequence[Path],
    score_paths: Sequence[Path],
    cases_path: Path,
    cv_cases: Sequence[str],
    outputs: Mapping[str, Path],
    failure_dice_threshold: float,
) -> pd.DataFrame:
    """Pool the per-case tables; ``outputs`` names the files: calibration, reliability, error_overlap,
    score_correlation, failure_detection (TSV), figure and risk_coverage (PNG). A case fails when its mean
    foreground Dice is below ``failure_dice_threshold`` (:func:`failure_detection`). Returns the calibration
    table."""
    if len(reliability_paths) != len(cv_cases) or len(error_paths) != len(cv_cases):
        raise ValueError(f"expected one reliability and one error table per case of {list(cv_cases)}")
    reliability = {c: pd.read_csv(p, sep="\t") for c, p in zip(cv_cases, reliability_paths, strict=True)}
    errors = {c: pd.read_csv(p, sep="\t") for c, p in zip(cv_cases, error_paths, strict=True)}
    calibration, bins, overlap = summarise_assessment(reliability, errors)
    scores = pd.concat([pd.read_csv(p, sep="\t") for p in score_paths], ignore_index=True)
    scores = scores[scores["case"].isin(list(cv_cases))]
    dice = case_dice(pd.read_csv(cases_path, sep="\t"), "cv")
    correlations = score_correlations(scores, dice)
    failures, risk_coverage = failure_detection(scores, dice, failure_dice_threshold)
    _write(outputs["calibration"], calibration)
    _write(outputs["reliability"], bins)
    _write(outputs["error_overlap"], overlap)
    _write(outputs["score_correlation"], correlations)
    _write(outputs["failure_detection"], failures)
    save_png(reliability_figure(calibration, bins, overlap), outputs["figure"])
    save_png(risk_coverage, outputs["risk_coverage"])
    return calibration


def review_files(
    score_paths: Sequence[Path],
    cases_path: Path,
    cv_cases: Sequence[str],
    score: str,
    quantile: float,
    out: Path,
    failures_path: Path | None = None,
    choice_out: Path | None = None,
    test_failures_out: Path | None = None,
    dice_threshold: float = 0.7,
) -> pd.DataFrame:
    """:func:`review_list` over every case's scores TSV; Dice from ``metrics/cases.tsv`` where known. ``score``
    ``auto`` is decided by :func:`choose_review_score` on ``failures_path`` (the failure-detection table), and the
    choice is written to ``choice_out``. ``test_failures_out``: the failure-detection table
    (:func:`failure_detection`, failure = Dice below ``dice_threshold``) over the labelled test cases, measured as
    on the cross-validation (no case: rows of 0 cases)."""
    scores = pd.concat([pd.read_csv(p, sep="\t") for p in score_paths], ignore_index=True)
    if score == "auto" and failures_path is None:
        raise InputError("predict.review_score auto needs the failure-detection table of the cross-validation")
    failures = pd.read_csv(failures_path, sep="\t") if failures_path is not None else pd.DataFrame()
    choice = choose_review_score(failures, scores, score)
    table = review_list(scores, cv_cases, case_dice(pd.read_csv(cases_path, sep="\t")), str(choice["score"]), quantile)
    if choice_out is not None:
        atomic_write_text(choice_out, json.dumps(choice, indent=2) + "\n")
    if test_failures_out is not None:
        test_dice = case_dice(pd.read_csv(cases_path, sep="\t"), "test")
        labelled = scores[scores["case"].isin(test_dice.index) & ~scores["case"].isin(list(cv_cases))]
        _write(test_failures_out, failure_detection(labelled, test_dice, dice_threshold)[0])
    _write(out, table)
    return table
