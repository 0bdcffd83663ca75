"""Case-level failure detection as it ships (issue #23): scored from the written outputs of Snakefile runs.

Each argument is the work folder of a run of the Snakefile (``config.yaml`` in it, its ``results`` folder as the
config says). The runs are made beforehand with the user's command, for example

    snakemake --snakefile Snakefile --directory WORK --configfile WORK/config.yaml --cores 2

and this script only reads what they wrote, so every figure is the pipeline's own:

* ``assessment/failure_detection.tsv``: per case score, on the cross-validation cases, Spearman's rho against the
  mean foreground Dice, AURC with the random and optimal references, the gap closed and the failure AUROC
  (``carve.evaluation.failure``);
* ``assessment/review_score.json``: the score ``predict.review_score: auto`` chose;
* ``metrics/cases.tsv``: the mean foreground Dice of cross-validation (and labelled test) cases;
* ``uncertainty/{case}.tsv`` of every case, to check that a score means the same on test cases as on
  cross-validation cases (``comparability``): the review list flags a case whose risk reaches the 0.75 quantile
  of the cross-validation cases' (``carve.evaluation.calibration.review_list``, the pipeline's own rule), so a
  score whose scale is the same on test cases flags about a quarter of test cases drawn from the same
  population; one that shifts with the number of members flags far more or far fewer.

Writes ``bench/results/failure_detection.md`` and ``.json`` (``--out`` to change), naming the CPU and every config
key of each run that differs from the user's defaults.

    python bench/bench_failure_detection.py /work/hipwork /work/hipwork-projections
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from machine import cpu_model
from pipeline_run import defaults

from carve.evaluation.calibration import REVIEW_CANDIDATES, review_list
from carve.evaluation.failure import score_direction
from carve.evaluation.report import foreground_dice

BENCH = Path(__file__).resolve().parent
REVIEW_QUANTILE = 0.75  # the default predict.review_quantile
USER_KEYS = ("cases", "results", "labels", "modality")  # what a user must set


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "labels":
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + str(key)] = value
    return out


def changed_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config keys beyond what a user must set, with the default each replaces."""
    known = defaults()
    return {
        key: {"value": value, "default": known.get(key, "(none)")}
        for key, value in flatten(config).items()
        if key not in USER_KEYS and known.get(key, object()) != value
    }


def comparability(scores: pd.DataFrame, cv_cases: list[str], dice: pd.Series) -> pd.DataFrame:
    """Per score: the share of test cases the review rule flags against the cross-validation quantile, and the
    medians of the score on each set."""
    test = scores[~scores["case"].isin(cv_cases)]
    rows = []
    for score in [c for c in scores.columns if c not in ("case", "members", "foreground_voxels")]:
        values = scores[score].to_numpy(float)
        if not np.isfinite(values[scores["case"].isin(cv_cases).to_numpy()]).any() or test.empty:
            continue
        table = review_list(scores, cv_cases, dice, score, REVIEW_QUANTILE)
        flagged = table[table["set"] == "test"]["review"]
        rows.append(
            {
                "score": score,
                "direction": score_direction(score),
                "candidate": score in REVIEW_CANDIDATES,
                "median_cv": float(np.nanmedian(scores.loc[scores["case"].isin(cv_cases), score])),
                "median_test": float(np.nanmedian(test[score])),
                "test_flagged": float(flagged.mean()),
                "test_cases": int(len(flagged)),
            }
        )
    return pd.DataFrame(rows)


def score_run(work: Path) -> dict[str, Any]:
    config = yaml.safe_load((work / "config.yaml").read_text())
    results = work / config["results"]
    cases = pd.read_csv(results / "metrics" / "cases.tsv", sep="\t")
    per_case = foreground_dice(cases)
    cv = per_case[per_case["set"] == "cv"]
    cv_cases = sorted(cv["case"])
    tables = [pd.read_csv(p, sep="\t") for p in sorted((results / "uncertainty").glob("*.tsv"))]
    scores = pd.concat(tables, ignore_index=True)
    members = scores.set_index("case")["members"]
    failures = pd.read_csv(results / "assessment" / "failure_detection.tsv", sep="\t")
    choice = json.loads((results / "assessment" / "review_score.json").read_text())
    members_path = results / "members.json"
    members_decision = json.loads(members_path.read_text()) if members_path.is_file() else None
    dice = per_case.set_index("case")["mean_foreground_dice"]
    return {
        "work": str(work),
        "changed_keys": changed_keys(config),
        "cv_cases": len(cv_cases),
        "cv_mean_dice": float(cv["mean_foreground_dice"].mean()),
        "cv_dice_range": [float(cv["mean_foreground_dice"].min()), float(cv["mean_foreground_dice"].max())],
        "members_cv": sorted({int(members[c]) for c in cv_cases}),
        "members_test": sorted({int(m) for c, m in members.items() if c not in cv_cases}),
        "failure_detection": failures.to_dict(orient="records"),
        "review_score": choice,
        "members_decision": members_decision,
        "comparability": comparability(scores, cv_cases, dice).to_dict(orient="records"),
    }


def number(value: Any, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def members_lines(decision: dict[str, Any] | None) -> list[str]:
    """The run's members.json in words (runs of carve before the decision existed have none)."""
    if decision is None or "mean_dice" not in decision:
        return []
    dice, gap = decision["mean_dice"], decision["best_gap_closed"]
    verdict = "kept" if decision["keep"] else "dropped"
    return [
        f"members.json: the mirrorings and projections {decision['extra_members']} were {verdict} "
        f"({decision['reason']}): cross-validation Dice {dice['plain']:.3f} plain against {dice['extra']:.3f} with "
        f"them; best gap closed {number(gap['plain'], 2)} against {number(gap['extra'], 2)}.",
        "",
    ]


def render(runs: list[dict[str, Any]], cpu: str) -> str:
    lines = [
        "# Case-level failure detection as it ships (issue #23)",
        "",
        f"Machine: {cpu}. Every figure is read from the written outputs of a Snakefile run "
        "(bench/bench_failure_detection.py); rows are sorted by AURC on the cross-validation cases.",
        "",
    ]
    for run in runs:
        keys = ", ".join(f"`{k}: {v['value']}` (default {v['default']})" for k, v in run["changed_keys"].items())
        lines += [
            f"## {run['work']}",
            "",
            f"Keys that differ from the defaults: {keys or 'none'}. Cross-validation: {run['cv_cases']} cases, mean "
            f"foreground Dice {run['cv_mean_dice']:.3f} ({run['cv_dice_range'][0]:.3f}-{run['cv_dice_range'][1]:.3f});"
            f" members per case: cross-validation {run['members_cv']}, test {run['members_test'] or 'none'}. "
            f"`review_score: auto` chose `{run['review_score']['score']}`.",
            "",
            *members_lines(run["members_decision"]),
            "| score | rho | AURC | random | optimal | gap closed | AUROC | failures |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in run["failure_detection"]:
            lines.append(
                f"| {row['score']} | {number(row['spearman_rho'], 2)} | {number(row['aurc'])} | "
                f"{number(row['aurc_random'])} | {number(row['aurc_optimal'])} | {number(row['gap_closed'], 2)} | "
                f"{number(row['auroc'], 2)} | {row['failures']} / {row['cases']} |"
            )
        if run["comparability"]:
            lines += [
                "",
                f"Comparability on the test cases: share flagged by the review rule (risk at or above the "
                f"{REVIEW_QUANTILE} quantile of the cross-validation cases'; about {1 - REVIEW_QUANTILE:.2f} when the "
                "score means the same on both), and the medians:",
                "",
                "| score | review candidate | median cv | median test | test flagged |",
                "|---|---|---|---|---|",
            ]
            for row in run["comparability"]:
                lines.append(
                    f"| {row['score']} | {'yes' if row['candidate'] else ''} | {number(row['median_cv'])} | "
                    f"{number(row['median_test'])} | {number(row['test_flagged'], 2)} of {row['test_cases']} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="work folders of Snakefile runs (config.yaml in each)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "failure_detection")
    args = parser.parse_args(argv)
    runs = [score_run(w.resolve()) for w in args.runs]
    cpu = cpu_model()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "runs": runs}, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(render(runs, cpu))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
