"""Paired comparisons of the hippocampus10 runs of bench/train_hippocampus.py, with 95 % confidence intervals.

    python bench/compare_hippocampus.py    # reads bench/results/train_hippocampus*.json, writes compare_hippocampus.md

Every run scores the same 10 cases, each by the fold that held it out, so two runs are compared case by case: the
mean of the per-case differences of the mean foreground Dice, their standard deviation, Student's t with 9 degrees
of freedom and its two-sided 95 % interval. The split comes from the config's seed: runs of one seed hold out the
same pairs of cases, and a pair of runs of different seeds is marked (other split: its folds trained on other
cases). The interval covers how the 10 cases vary, with each run's own training noise folded into the per-case
differences; it does not cover another seed of the whole run (the seed-repeat pair measures that). Issue #19's aim
(+0.02 over supervised training at equal compute) is read against the interval's upper end.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
AIM = 0.02

EQUAL_COMPUTE = "equal compute"  # a method against supervised at the same minutes: reads issue #19's aim
SEED = "seed"  # one config run with two seeds


class Pair(NamedTuple):
    run: str  # bench/results/<run>.json
    reference: str
    what: str
    kind: str = ""  # EQUAL_COMPUTE, SEED or another comparison


PAIRS: tuple[Pair, ...] = (
    Pair("train_hippocampus_10min", "train_hippocampus", "supervised: 10 minutes against 5"),
    Pair(
        "train_hippocampus_10min_seed1", "train_hippocampus_10min", "supervised 10 minutes: seed 1 against seed 0", SEED
    ),
    Pair("train_hippocampus_bf16_750", "train_hippocampus_fp32_750", "supervised, 750 iterations: bf16 against fp32"),
    Pair(
        "train_hippocampus_mean_teacher_u60",
        "train_hippocampus",
        "mean teacher at 5 minutes against supervised",
        EQUAL_COMPUTE,
    ),
    Pair(
        "train_hippocampus_copy_paste_u60",
        "train_hippocampus",
        "copy-paste, 750 iterations, against supervised 5 min",
        EQUAL_COMPUTE,
    ),
    Pair(
        "train_hippocampus_copy_paste_u20",
        "train_hippocampus",
        "copy-paste, 20 unlabelled, against supervised 5 min",
        EQUAL_COMPUTE,
    ),
    Pair(
        "train_hippocampus_self_training_u60",
        "train_hippocampus",
        "self-training (from scratch) 2.5 + 2.5 min",
        EQUAL_COMPUTE,
    ),
    Pair(
        "train_hippocampus_self_training_teacher_u60",
        "train_hippocampus",
        "self-training (from teacher) 750 + 750",
        EQUAL_COMPUTE,
    ),
    Pair(
        "train_hippocampus_copy_paste_u60",
        "train_hippocampus_bf16_750",
        "copy-paste against supervised, 750 iterations",
    ),
    Pair(
        "train_hippocampus_copy_paste_u20", "train_hippocampus_copy_paste_u60", "copy-paste: 20 unlabelled against 60"
    ),
    Pair(
        "train_hippocampus_mean_teacher_u60_10min",
        "train_hippocampus_10min",
        "mean teacher at 10 minutes",
        EQUAL_COMPUTE,
    ),
    Pair(
        "train_hippocampus_copy_paste_u60_10min", "train_hippocampus_10min", "copy-paste at 10 minutes", EQUAL_COMPUTE
    ),
    Pair(
        "train_hippocampus_mean_teacher_u60_10min", "train_hippocampus_mean_teacher_u60", "mean teacher: 10 min, 5 min"
    ),
    Pair(
        "train_hippocampus_copy_paste_u60_10min",
        "train_hippocampus_mean_teacher_u60_10min",
        "copy-paste against the plain mean teacher, 10 min",
    ),
    Pair(
        "train_hippocampus_self_training_teacher_u60_10min",
        "train_hippocampus_10min",
        "self-training 5 + 5 minutes",
        EQUAL_COMPUTE,
    ),
)


@dataclass(frozen=True)
class Paired:
    pair: Pair
    cases: int
    run_mean: float
    reference_mean: float
    difference: float
    sd: float
    t: float
    low: float
    high: float
    higher: int
    same_split: bool


def case_dice(result: dict) -> dict[str, float]:
    """Mean foreground Dice of the written cv/ prediction (postprocessed: what ships), by case."""
    return {c["case"]: float(c["mean_dice"]) for c in result["scores"]["cases"]}


def held_out(result: dict) -> list[list[str]]:
    return [sorted(s["val"]) for s in result["scores"]["splits"]]


def paired(run: dict, reference: dict, pair: Pair) -> Paired:
    """The per-case differences run - reference and their 95 % interval (Student's t)."""
    a, b = case_dice(run), case_dice(reference)
    if set(a) != set(b):
        raise ValueError(f"{pair.run} and {pair.reference} scored different cases: {sorted(set(a) ^ set(b))}")
    cases = sorted(a)
    diffs = [a[c] - b[c] for c in cases]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return Paired(
        pair=pair,
        cases=n,
        run_mean=statistics.fmean(a.values()),
        reference_mean=statistics.fmean(b.values()),
        difference=mean,
        sd=sd,
        t=mean / se if se > 0 else math.inf * (1 if mean > 0 else -1),
        low=mean - half,
        high=mean + half,
        higher=sum(d > 0 for d in diffs),
        same_split=held_out(run) == held_out(reference),
    )


def render(rows: list[Paired], machines: dict[str, str], missing: list[str]) -> str:
    lines = [
        "# hippocampus10: paired comparisons of the Snakefile runs, with 95 % intervals",
        "",
        "`python bench/compare_hippocampus.py`; no training: it reads the runs' JSON in bench/results/ (each "
        "written by bench/train_hippocampus.py, whose .md names its machine, commit and the config keys that "
        "differ from the defaults). Per pair: the mean over the 10 cases of the difference in mean foreground"
        " Dice (cv/, what ships), each case scored by the fold that held it out, one split for every run of a seed;"
        " SD of the differences; Student's t (9 degrees of freedom) and the two-sided 95 % interval; cases "
        "where the run scored higher. The interval covers the cases' variation with each run's training noise"
        f" inside it, not a different split or seed. Issue #19's aim is +{AIM} at equal compute: `aim "
        "reachable` says whether the interval's upper end reaches it.",
        "",
        "| pair | run (mean Dice) | reference (mean Dice) | difference | SD | t | 95 % interval | higher "
        "| aim reachable |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        p = r.pair
        reachable = ("yes" if r.high >= AIM else "no") if p.kind == EQUAL_COMPUTE else ""
        what = p.what if r.same_split else f"{p.what} (other split)"
        lines.append(
            f"| {what} | {p.run} ({r.run_mean:.3f}) | {p.reference} ({r.reference_mean:.3f}) | {r.difference:+.4f} "
            f"| {r.sd:.3f} | {r.t:+.2f} | [{r.low:+.3f}, {r.high:+.3f}] | {r.higher} of {r.cases} | {reachable} |"
        )
    at_equal = [r for r in rows if r.pair.kind == EQUAL_COMPUTE]
    if at_equal:
        best = max(at_equal, key=lambda r: r.high)
        lines += [
            "",
            f"* At equal compute, the highest upper end of any method's interval is {best.high:+.3f} "
            f"({best.pair.what}): "
            + (
                f"no method's interval reaches the aim of +{AIM}."
                if best.high < AIM
                else f"the aim of +{AIM} lies inside at least one interval."
            ),
        ]
    for r in rows:
        if r.pair.kind == SEED:
            lines.append(
                f"* One config run with two seeds ({r.pair.what}): mean {r.run_mean:.3f} against "
                f"{r.reference_mean:.3f}, "
                f"per-case differences {r.difference:+.4f} on average with SD {r.sd:.3f}: what a seed alone moves, "
                "to read every other pair's difference and SD against."
            )
    lines.append("* Machines of the runs: " + "; ".join(sorted(set(machines.values()))) + ".")
    if missing:
        lines.append("* Pairs left out (a result not in bench/results/): " + ", ".join(missing) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS / "compare_hippocampus.md")
    args = parser.parse_args(argv)
    loaded: dict[str, dict] = {}
    rows, missing = [], []
    for pair in PAIRS:
        paths = {name: args.results / f"{name}.json" for name in (pair.run, pair.reference)}
        if not all(p.is_file() for p in paths.values()):
            missing.append(f"{pair.run} against {pair.reference}")
            continue
        for name, path in paths.items():
            loaded.setdefault(name, json.loads(path.read_text()))
        rows.append(paired(loaded[pair.run], loaded[pair.reference], pair))
    machines = {name: result["run"]["machine"].split(" (")[0] for name, result in loaded.items()}
    text = render(rows, machines, missing)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
