"""Case-level failure detection: does a per-case score find the cases whose segmentation failed?

Failure detection as the 3D segmentation failure-detection benchmark measures it (Zenk et al. 2025), with the
risk-coverage analysis of fd-shifts (github.com/IML-DKFZ/fd-shifts, ``fd_shifts/analysis/rc_stats.py`` and
``rc_stats_utils.py``). Two agreement scores join the uncertainty scores of
:mod:`carve.prediction.uncertainty`:

* :func:`pairwise_member_dice`: per label, the mean Dice between the label maps of every pair of ensemble
  members (a pair where neither map has the label agrees: Dice 1.0);
* :func:`predicted_dice`: per label, the soft Dice between the mean probability map and its own argmax, an
  estimate of the Dice the prediction would reach if the probabilities were calibrated.

**Direction.** The risk of a case is ``1 - Dice`` (its mean foreground Dice against the reference), in [0, 1].
A score's *risk score* is the score oriented so that higher means more likely wrong: the uncertainty scores as
they are, the agreement scores (names starting with one of :data:`HIGHER_IS_SAFER_PREFIXES`) negated; see
:func:`score_direction` and :func:`risk_score`. Every other name counts as higher-is-riskier.

**Risk-coverage curve** (:func:`risk_coverage_curve`). Cases are retained from the lowest risk score up; with
``i`` of ``n`` cases retained (coverage ``i / n``) the selective risk is the mean risk of the retained cases.
Cases with equal risk scores cannot be separated by any threshold: they are retained or rejected together, so
the curve has a point only at the end of each group of tied scores (and at coverage 1), as in fd-shifts'
``selective_risk_stats`` (confidence = -risk score). A last point at coverage 0 repeats the risk of the smallest
retained set (fd-shifts' final point), so that the curve spans [0, 1]. The curve depends neither on the order of
the cases nor on how ties would be broken.

**AURC** (:func:`aurc`): the area under that curve by the trapezoidal rule over its points, as fd-shifts'
``RiskCoverageStats.aurc`` (``evaluate_auc`` with its default linear interpolation), in units of risk (fd-shifts
multiplies by 1000 for display; not here). With ``n`` distinct scores and ``r_i`` the selective risk of the
``i`` least risky cases it is ``(sum_i r_i + (r_1 - r_n) / 2) / n``. Lower is better. References:

* :func:`aurc_random`: the mean risk, the expected AURC of a ranking in random order (at every coverage the
  expected selective risk is the mean risk) and the AURC of a constant score (up to rounding);
* :func:`aurc_optimal`: the AURC of ranking by the risk itself, one case at a time (cases of equal Dice in any
  order: they give the same curve), as fd-shifts' ``RiskCoverageStats.aurc_optimal`` does for continuous risks
  (distinct confidences along the sorted risks). A score that orders the cases strictly as their risk does
  reaches it exactly. A score that *ties* cases (a plateau) is scored on the chord between the ends of the tie
  group; where the tied cases have equal risk, that chord can pass slightly below the optimal curve (fd-shifts
  notes the same for plateaus), so a score equal to ``1 - Dice`` with repeated Dice values can score a little
  below the optimum (the benchmark's ``compute_optimal_aurc`` ranks by ``-risk`` with such ties instead; the
  two agree when no two cases have the same Dice). fd-shifts' closed form for binary risks (the limit of many
  cases) is not used: the optimum here is always the finite-sample curve, so that it is comparable with
  :func:`aurc`;
* :func:`gap_closed`: ``(random - AURC) / (random - optimal)``, the benchmark's ``norm-aurc``: 1 for a perfect
  ranking, 0 for a constant score (and for a random one in expectation), negative when worse than random (above
  1 only through a plateau as above); NaN when random and optimal agree (every case has the same Dice).

(The older fd-shifts ``StatsCache.rc_curve_stats``, which the benchmark's code adapts, puts a point after the
first case of each tie group, so its result depends on the order of tied cases, and its area stops at coverage
``1 / n``; the tie-group curve above is fd-shifts' current one.)

**Failure AUROC** (:func:`failure_auroc`): a case *fails* when its Dice is below a threshold; the AUROC is the
probability that a failed case has a higher risk score than a successful one, ties counting 1/2 (Mann-Whitney U;
fd-shifts' ``failauc``). 1 separates perfectly, 0.5 is chance; NaN when every case is on one side.

:func:`failure_detection_table` reports all of it per score; :func:`best_score` picks the score to rank the review
list by (:func:`carve.evaluation.calibration.review_list` ranks highest first: pass it a higher-is-riskier score,
or negate an agreement score first); :func:`risk_coverage_figure` draws the curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from carve.errors import InputError
from carve.evaluation.report import plot_style, spearman
from carve.prediction.uncertainty import _label_name

HIGHER_IS_SAFER_PREFIXES = ("pairwise_dice_", "predicted_dice_", "member_predicted_dice_")
HIGHER_IS_RISKIER = "higher_is_riskier"
HIGHER_IS_SAFER = "higher_is_safer"
NOT_SCORES = ("case", "members", "foreground_voxels")  # columns of the uncertainty tables that are not scores
GAP_TOLERANCE = 1e-12  # random and optimal AURC closer than this: no gap to close
CURVE_COLUMNS = ["coverage", "cases", "selective_risk", "threshold"]
TABLE_COLUMNS = [
    "score",
    "direction",
    "cases",
    "spearman_rho",
    "aurc",
    "aurc_random",
    "aurc_optimal",
    "gap_closed",
    "auroc",
    "failures",
]


def _dice_from_counts(overlap: int, first: int, second: int) -> float:
    return 2.0 * overlap / (first + second) if first + second else 1.0


def _key_names(label_values: Sequence[int], label_names: Mapping[int, str] | None) -> list[str]:
    values = [int(k) for k in label_values]
    if not values:
        raise ValueError("at least one label value is needed")
    if len(set(values)) != len(values):
        raise ValueError(f"label values repeat: {values}")
    names = [_label_name(k, label_names) for k in values]
    if "foreground" in names or len(set(names)) != len(names):
        raise ValueError(f"label names must be distinct and not 'foreground' (the mean), got {names}")
    return names


def pairwise_member_dice(
    member_labels: Sequence[np.ndarray],
    label_values: Sequence[int],
    label_names: Mapping[int, str] | None = None,
) -> dict[str, float]:
    """Agreement of the ensemble members' label maps: per label, the mean Dice over all pairs of members.

    ``member_labels`` are the members' label maps ``(z, y, x)`` (all of one shape, values compared with
    ``label_values``). For label ``k`` the score is the mean over unordered pairs ``i < j`` of
    ``Dice(member_i == k, member_j == k)``, where a pair in which neither map has ``k`` scores 1.0 (they agree).
    Keys: ``pairwise_dice_<name>`` per label (name from ``label_names``, else ``label_<k>``) and
    ``pairwise_dice_foreground``, the mean over the labels. Higher = members agree more = safer.

    Memory: one pair at a time, a boolean volume and the agreeing voxels of one member beyond the inputs.
    Raises ValueError for fewer than two members (the caller decides what a single model means).
    """
    names = _key_names(label_values, label_names)
    values = [int(k) for k in label_values]
    members = [np.asarray(m) for m in member_labels]
    if len(members) < 2:
        raise ValueError(f"pairwise agreement needs at least two members, got {len(members)}")
    shapes = {m.shape for m in members}
    if len(shapes) != 1:
        raise ValueError(f"the members' label maps differ in shape: {sorted(shapes)}")
    counts = [[int(np.count_nonzero(m == k)) for k in values] for m in members]
    totals = np.zeros(len(values))
    pairs = list(combinations(range(len(members)), 2))
    for i, j in pairs:
        agreeing = members[i][members[i] == members[j]]  # the voxels where both members give the same label
        for index, k in enumerate(values):
            overlap = int(np.count_nonzero(agreeing == k))
            totals[index] += _dice_from_counts(overlap, counts[i][index], counts[j][index])
        del agreeing
    means = totals / len(pairs)
    scores = {f"pairwise_dice_{name}": float(value) for name, value in zip(names, means, strict=True)}
    scores["pairwise_dice_foreground"] = float(means.mean())
    return scores


def member_agreement(member_labels: Sequence[np.ndarray], label_names: Mapping[int, str]) -> dict[str, float]:
    """:func:`pairwise_member_dice` of a case's members for the labels of ``label_names``; every value NaN when
    there are fewer than two members (a cross-validation case predicted by one fold without flips or
    projections: agreement is undefined there, not perfect)."""
    values = sorted(int(k) for k in label_names)
    if len(member_labels) < 2:
        keys = [f"pairwise_dice_{name}" for name in (*_key_names(values, label_names), "foreground")]
        return dict.fromkeys(keys, float("nan"))
    return pairwise_member_dice(member_labels, values, label_names)


def predicted_dice(mean_probabilities: np.ndarray, label_names: Mapping[int, str] | None = None) -> dict[str, float]:
    """Soft Dice between each label's mean probability map and the argmax: the Dice the ensemble expects.

    ``mean_probabilities`` is ``(n_classes, z, y, x)`` (label 0 is background; float16 or float32). For every
    label ``k >= 1``, with ``p_k`` its probability map and ``a_k`` the voxels whose argmax is ``k`` (the first
    class on ties, as :func:`numpy.argmax`): ``2 sum(p_k a_k) / (sum(p_k) + sum(a_k))``, 1.0 when both sums are
    0. Keys ``predicted_dice_<name>`` (name from ``label_names``, else ``label_<k>``) and
    ``predicted_dice_foreground``, the mean over the labels. Higher = safer.

    Sums run in float64 one class at a time; beyond the input, memory is a float32 and a label volume. The sums
    add over voxels: :class:`PredictedDiceSums` takes a volume slab by slab."""
    p = np.asarray(mean_probabilities)
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"mean_probabilities must be (n_classes >= 2, z, y, x), got shape {p.shape}")
    sums = PredictedDiceSums(p.shape[0], label_names)
    sums.add(p)
    return sums.result()


class PredictedDiceSums:
    """:func:`predicted_dice` of a volume given slab by slab (any split into disjoint parts): per label the
    overlap ``sum(p_k a_k)``, the mass ``sum(p_k)`` and the voxel count ``sum(a_k)``, each in float64, added
    part by part; :meth:`result` gives what :func:`predicted_dice` gives for the whole (up to float64 summation
    order). The streamed ensemble (:func:`carve.prediction.inference.sliding_window_probabilities`) scores each
    member this way without holding its whole map."""

    def __init__(self, n_classes: int, label_names: Mapping[int, str] | None = None) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.n_classes = int(n_classes)
        self.names = _key_names(range(1, n_classes), label_names)
        self.overlap = np.zeros(n_classes - 1)
        self.mass = np.zeros(n_classes - 1)
        self.voxels = np.zeros(n_classes - 1, dtype=np.int64)

    def add(self, probabilities: np.ndarray) -> None:
        """Add a part ``(n_classes, z, y, x)`` of the volume."""
        p = np.asarray(probabilities)
        if p.ndim != 4 or p.shape[0] != self.n_classes:
            raise ValueError(f"probabilities must be ({self.n_classes}, z, y, x), got shape {p.shape}")
        best = np.array(p[0], dtype=np.float32)
        argmax = np.zeros(best.shape, dtype=np.min_scalar_type(self.n_classes - 1))
        for c in range(1, self.n_classes):
            higher = p[c] > best
            argmax[higher] = c
            best[higher] = p[c][higher]
            del higher
        del best
        for i, k in enumerate(range(1, self.n_classes)):
            predicted = argmax == k
            self.overlap[i] += float(p[k][predicted].sum(dtype=np.float64))
            self.mass[i] += float(p[k].sum(dtype=np.float64))
            self.voxels[i] += int(np.count_nonzero(predicted))

    def result(self) -> dict[str, float]:
        scores = {}
        for i, name in enumerate(self.names):
            total = self.mass[i] + self.voxels[i]
            scores[f"predicted_dice_{name}"] = 2.0 * float(self.overlap[i]) / float(total) if total > 0 else 1.0
        scores["predicted_dice_foreground"] = float(np.mean(list(scores.values())))
        return scores


def member_mean_predicted_dice(per_member: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean over members of each member's own :func:`predicted_dice` (keys prefixed ``member_``).

    Unlike the predicted Dice of the ensemble's mean probabilities, its expectation does not depend on how many
    members a case has: a cross-validation case (one fold's members) and a test case (every fold's) are scored
    alike, so their values can be compared (with one member it equals ``predicted_dice``). Empty input (no
    members recorded) gives an empty dict."""
    if not per_member:
        return {}
    keys = list(per_member[0])
    if any(list(member) != keys for member in per_member):
        raise ValueError("every member's predicted Dice must have the same keys")
    return {f"member_{key}": float(np.mean([member[key] for member in per_member])) for key in keys}


def score_direction(name: str) -> str:
    """``higher_is_safer`` for the agreement scores (:data:`HIGHER_IS_SAFER_PREFIXES`), else ``higher_is_riskier``."""
    return HIGHER_IS_SAFER if name.startswith(HIGHER_IS_SAFER_PREFIXES) else HIGHER_IS_RISKIER


def risk_score(name: str, values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """The score ``name``'s values oriented so that higher = more likely wrong: agreement scores negated."""
    values = np.asarray(values, dtype=float)
    return -values if score_direction(name) == HIGHER_IS_SAFER else values


def _risks(
    risk_scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (risk scores, risks = 1 - Dice) as float arrays."""
    scores = np.asarray(risk_scores, dtype=float).ravel()
    dice = np.asarray(dice, dtype=float).ravel()
    if scores.shape != dice.shape:
        raise ValueError(f"{scores.size} risk scores but {dice.size} Dice values")
    if dice.size == 0:
        raise ValueError("no cases")
    if not np.isfinite(scores).all():
        raise ValueError("the risk scores must be finite (drop the cases without a score)")
    if not (np.isfinite(dice).all() and (dice >= 0).all() and (dice <= 1).all()):
        raise ValueError("Dice values must lie in [0, 1]")
    return scores, 1.0 - dice


def risk_coverage_curve(risk_scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray) -> pd.DataFrame:
    """The risk-coverage curve (see the module docstring): one row per point, by increasing coverage.

    Columns: ``coverage`` (fraction of cases retained), ``cases`` (retained), ``selective_risk`` (mean
    ``1 - Dice`` of the retained cases) and ``threshold`` (the largest risk score retained: every case with a
    score at most this is retained; NaN at coverage 0). Points sit at the end of each group of tied scores and
    at coverage 1; the first row, coverage 0, repeats the risk of the smallest retained set (fd-shifts).
    """
    scores, risks = _risks(risk_scores, dice)
    n = scores.size
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    error_sums = np.cumsum(risks[order])
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])  # last index of each tie group
    retained = ends + 1
    selective = error_sums[ends] / retained
    return pd.DataFrame(
        {
            "coverage": np.r_[0.0, retained / n],
            "cases": np.r_[0, retained],
            "selective_risk": np.r_[selective[0], selective],
            "threshold": np.r_[np.nan, sorted_scores[ends]],
        }
    )[CURVE_COLUMNS]


def _area(curve: pd.DataFrame) -> float:
    """Trapezoidal area under a :func:`risk_coverage_curve`."""
    coverage, risk = curve["coverage"].to_numpy(float), curve["selective_risk"].to_numpy(float)
    return float(np.sum(np.diff(coverage) * (risk[1:] + risk[:-1]) / 2.0))


def aurc(risk_scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray) -> float:
    """Area under the risk-coverage curve, trapezoidal over its points as fd-shifts' ``aurc`` (lower = better)."""
    return _area(risk_coverage_curve(risk_scores, dice))


def aurc_random(dice: Sequence[float] | np.ndarray) -> float:
    """The expected AURC of a random ranking and the AURC of a constant score: the mean risk ``1 - Dice``."""
    _, risks = _risks(np.zeros(np.size(dice)), dice)
    return float(risks.mean())


def _optimal_scores(dice: Sequence[float] | np.ndarray) -> np.ndarray:
    """Distinct risk scores (0, 1, ...) in the order of the risk ``1 - Dice``: the optimal ranking."""
    _, risks = _risks(np.zeros(np.size(dice)), dice)
    ranks = np.empty(risks.size)
    ranks[np.argsort(risks, kind="stable")] = np.arange(risks.size)
    return ranks


def aurc_optimal(dice: Sequence[float] | np.ndarray) -> float:
    """The AURC of ranking the cases by their risk ``1 - Dice`` one at a time (see the module docstring)."""
    return aurc(_optimal_scores(dice), dice)


def _gap_closed(value: float, random: float, optimal: float) -> float:
    gap = random - optimal
    return float((random - value) / gap) if gap > GAP_TOLERANCE else float("nan")


def gap_closed(risk_scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray) -> float:
    """``(random - AURC) / (random - optimal)``: 1 perfect, 0 random, < 0 worse; NaN when every Dice is equal."""
    return _gap_closed(aurc(risk_scores, dice), aurc_random(dice), aurc_optimal(dice))


def failure_auroc(
    risk_scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray, dice_threshold: float
) -> float:
    """AUROC of the risk score flagging the failed cases (Dice < ``dice_threshold``), ties counted 1/2.

    The Mann-Whitney U of the failed cases' scores against the others', divided by the number of pairs; NaN
    when no case fails or every case does.
    """
    if not 0.0 <= dice_threshold <= 1.0:
        raise ValueError(f"the Dice threshold must be in [0, 1], got {dice_threshold}")
    scores, _ = _risks(risk_scores, dice)
    failed = np.asarray(dice, dtype=float).ravel() < dice_threshold
    n_failed, n_ok = int(failed.sum()), int((~failed).sum())
    if n_failed == 0 or n_ok == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    u = ranks[failed].sum() - n_failed * (n_failed + 1) / 2.0
    return float(u / (n_failed * n_ok))


def score_columns(scores: pd.DataFrame) -> list[str]:
    """The score columns of an uncertainty table: numeric, not boolean, not one of :data:`NOT_SCORES`."""
    return [
        c
        for c in scores.columns
        if c not in NOT_SCORES
        and pd.api.types.is_numeric_dtype(scores[c])
        and not pd.api.types.is_bool_dtype(scores[c])
    ]


def _paired(scores: pd.DataFrame, dice: pd.Series) -> pd.DataFrame:
    """The score columns joined with the Dice (column ``dice``) on the cases both have; InputError if none."""
    if "case" not in scores.columns:
        raise InputError("the uncertainty scores have no 'case' column")
    if scores["case"].duplicated().any():
        repeated = sorted(map(str, scores.loc[scores["case"].duplicated(), "case"].unique()))
        raise InputError(f"the uncertainty scores repeat the case(s) {', '.join(repeated)}")
    if dice.index.duplicated().any():
        repeated = sorted(map(str, dice.index[dice.index.duplicated()].unique()))
        raise InputError(f"the Dice scores repeat the case(s) {', '.join(repeated)}")
    columns = score_columns(scores)
    if not columns:
        have = ", ".join(map(str, scores.columns))
        raise InputError(f"the uncertainty scores have no numeric score column (have {have})")
    joined = scores.set_index("case")[columns].join(dice.rename("dice").astype(float), how="inner")
    if joined.empty:
        raise InputError(
            f"no case has both uncertainty scores and a Dice score ({scores['case'].nunique()} scored case(s), "
            f"{dice.size} case(s) with Dice)"
        )
    known = joined["dice"].dropna()
    if not ((known >= 0) & (known <= 1)).all():
        raise InputError(f"Dice scores must lie in [0, 1], got [{known.min()}, {known.max()}]")
    return joined


def _score_row(name: str, values: pd.Series, dice: pd.Series, dice_threshold: float) -> dict[str, object]:
    row: dict[str, object] = {"score": name, "direction": score_direction(name), "cases": int(values.size)}
    if values.empty:
        return row | {c: np.nan for c in TABLE_COLUMNS[3:-1]} | {"failures": 0}
    risks = risk_score(name, values)
    value, random, optimal = aurc(risks, dice), aurc_random(dice), aurc_optimal(dice)
    return row | {
        "spearman_rho": spearman(values, dice)[0],
        "aurc": value,
        "aurc_random": random,
        "aurc_optimal": optimal,
        "gap_closed": _gap_closed(value, random, optimal),
        "auroc": failure_auroc(risks, dice, dice_threshold),
        "failures": int((dice.to_numpy(float) < dice_threshold).sum()),
    }


def failure_detection_table(scores: pd.DataFrame, dice: pd.Series, dice_threshold: float) -> pd.DataFrame:
    """Failure-detection metrics of every score over the cases with both the score and a Dice, best first.

    ``scores`` has a ``case`` column and one numeric column per score (``members``, ``foreground_voxels`` and
    non-numeric columns are skipped); ``dice`` is the mean foreground Dice indexed by case. Per score, the cases
    where the score or the Dice is missing (NaN, infinite) are left out. Columns: ``score``, ``direction``, ``cases``,
    ``spearman_rho`` (of the raw score against Dice: a useful ``higher_is_riskier`` score has rho < 0, a useful
    ``higher_is_safer`` score rho > 0; NaN for fewer than 3 cases or a constant), ``aurc``, ``aurc_random``,
    ``aurc_optimal``, ``gap_closed`` and ``auroc`` (on the risk score, so direction-free), and ``failures``
    (cases with Dice < ``dice_threshold``). Sorted by ``aurc`` (lowest first, NaN last), then name.

    Raises InputError when the threshold is outside [0, 1], when no case has both, or when the tables are
    malformed (no ``case`` column, repeated cases, no score column, Dice outside [0, 1]).
    """
    if not 0.0 <= dice_threshold <= 1.0:
        raise InputError(f"the failure Dice threshold must be in [0, 1], got {dice_threshold}")
    joined = _paired(scores, dice)
    rows = []
    for name in (c for c in joined.columns if c != "dice"):
        values = joined[name].astype(float)
        used = np.isfinite(values.to_numpy()) & np.isfinite(joined["dice"].to_numpy(float))
        rows.append(_score_row(name, values[used], joined["dice"][used], dice_threshold))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.sort_values(["aurc", "score"], na_position="last", kind="stable").reset_index(drop=True)


def best_score(table: pd.DataFrame) -> str:
    """The score of :func:`failure_detection_table` with the lowest AURC (ties: highest AUROC, then name)."""
    ranked = table[np.isfinite(table["aurc"].to_numpy(float))]
    if ranked.empty:
        raise InputError("no score has an AURC (no case with both a score and a Dice)")
    order = ranked.assign(_auroc=ranked["auroc"].astype(float).fillna(-np.inf))
    order = order.sort_values(["aurc", "_auroc", "score"], ascending=[True, False, True], kind="stable")
    return str(order["score"].iloc[0])


def risk_coverage_curves(scores: pd.DataFrame, dice: pd.Series, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """:func:`risk_coverage_curve` of the named scores (oriented by :func:`risk_score`), each over its cases."""
    joined = _paired(scores, dice)
    missing = [n for n in names if n not in joined.columns]
    if missing:
        raise InputError(f"no score(s) {', '.join(missing)} in the uncertainty tables")
    curves = {}
    for name in names:
        part = joined[[name, "dice"]].astype(float)
        part = part[np.isfinite(part.to_numpy()).all(axis=1)]
        if not part.empty:
            curves[name] = risk_coverage_curve(risk_score(name, part[name]), part["dice"])
    return curves


def risk_coverage_figure(
    curves: Mapping[str, pd.DataFrame], dice: Sequence[float] | np.ndarray | pd.Series, title: str = ""
) -> Figure:
    """Risk-coverage curves of a few scores, with the random (mean risk) and optimal references of ``dice``.

    ``curves`` maps a score's name to its :func:`risk_coverage_curve`; ``dice`` holds the cases' Dice for the
    references (those of the curves' cases). Points are joined by straight lines, whose area is the AURC.
    """
    dice = np.asarray(dice, dtype=float)
    dice = dice[np.isfinite(dice)]
    with plot_style():
        fig = Figure(figsize=(6.0, 4.5), layout="constrained")
        ax = fig.subplots()
        for name, curve in curves.items():
            ax.plot(curve["coverage"], curve["selective_risk"], marker=".", label=f"{name} (AURC {_area(curve):.3f})")
        if dice.size:
            optimal = risk_coverage_curve(_optimal_scores(dice), dice)
            ax.plot(
                optimal["coverage"],
                optimal["selective_risk"],
                color="k",
                linestyle="--",
                linewidth=1,
                label=f"optimal: ranked by 1 - Dice (AURC {_area(optimal):.3f})",
            )
            random = aurc_random(dice)
            ax.axhline(random, color="#7f7f7f", linestyle=":", linewidth=1, label=f"random (AURC {random:.3f})")
        ax.set(
            xlabel="coverage (fraction of cases kept, least risky first)",
            ylabel="selective risk (mean 1 - Dice of kept cases)",
            xlim=(0, 1),
            ylim=(0, None),
        )
        ax.set_title(title or f"risk-coverage ({dice.size} cases)")
        ax.grid(alpha=0.3)
        if ax.get_lines():  # no case: no line, no legend
            ax.legend(loc="best", fontsize=7)
    return fig
