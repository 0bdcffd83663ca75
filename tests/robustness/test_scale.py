"""A sheet of 200 cases: the dry run plans one job per case and rule where it should, every path stays in the
results folder, and no job gets its inputs on a command line (scripts read them from the snakemake object)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, job_stats
from test_sheet_inputs import assert_inside, dry_run, planned_jobs, tiny_case, write_sheet

N_CASES = 200
FOLDS = 3
# valid ids that look like carve's own file names, or like another id with a suffix carve appends
LOOKALIKES = ["cases", "summary", "all", "plans", "fold_0", "a", "a_errors", "a_reliability", "a.v2", "a.nii.v2"]


def many_cases(workdir: Path, n: int) -> dict[str, list[str]]:
    """A sheet of ``n`` tiny cases in ``workdir/data``: every 4th a test case, every 8th of those labelled."""
    sets: dict[str, list[str]] = {"train": [], "test": [], "labelled_test": []}
    rows = []
    for i in range(n):
        case = LOOKALIKES[i] if i < len(LOOKALIKES) else f"case-{i:03d}.v1"  # dots and dashes, as real ids have
        role = "test" if i % 4 == 0 else "train"
        labelled = role == "train" or i % 8 == 0
        tiny_case(workdir / "data" / "scans", case, label=labelled)
        sets[role].append(case)
        if role == "test" and labelled:
            sets["labelled_test"].append(case)
        rows.append((case, f"scans/{case}_img.nii.gz", f"scans/{case}_lab.nii.gz" if labelled else "", role))
    write_sheet(workdir / "data" / "cases.tsv", rows)
    return sets


def config(n_folds: int = FOLDS) -> dict:
    return {"cases": "data/cases.tsv", "results": "results/big", "labels": {1: "organ", 2: "vessel"}, "folds": n_folds}


def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, from the Snakefile and every rules/*.smk."""
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))])
    parts = re.split(r"^\s*(?:rule|checkpoint) (\w+):\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def big_dry_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scale")
    sets = many_cases(workdir, N_CASES)
    out = dry_run(workdir, config())
    assert out.returncode == 0, out.stdout[-3000:]
    return workdir, sets, out.stdout


@pytest.mark.e2e
def test_job_counts_follow_the_case_sets(big_dry_run):
    _, sets, text = big_dry_run
    n_train, n_test, n_labelled = len(sets["train"]), len(sets["test"]), len(sets["labelled_test"])
    assert (n_train, n_test, n_labelled) == (150, 50, 25)
    assert {"a", "a_errors", "a_reliability"} <= set(sets["train"]) and {"cases", "a.v2"} <= set(sets["test"])
    stats = job_stats(text)
    expected = {  # the README's "one job per" column
        "convert_image": N_CASES,
        "convert_label": n_train + n_labelled,
        "preprocess": n_train,
        "train_fold": FOLDS,
        "predict": n_test,
        "predict_cv": n_train,
        "evaluate": n_train + n_labelled,
        "export_mesh": N_CASES,
        "preview_case": N_CASES,
        "plan": 1,
        "split": 1,
        "summarise_metrics": 1,
        "write_manifest": 1,
    }
    assert {rule: stats.get(rule) for rule in expected} == expected
    allowed = {1, FOLDS, N_CASES, n_train, n_test, n_labelled, n_train + n_labelled}
    assert {rule: n for rule, n in stats.items() if n not in allowed} == {}  # every rule: once, per fold or per case
    jobs = planned_jobs(text)
    assert Counter(j["rule"] for j in jobs) == Counter(stats)


@pytest.mark.e2e
def test_every_job_belongs_to_its_case_and_stays_in_results(big_dry_run):
    workdir, sets, text = big_dry_run
    jobs = planned_jobs(text)
    assert_inside(workdir, "results/big", jobs)
    outputs = [path for job in jobs for path in job["output"]]
    assert len(outputs) == len(set(outputs)), "two jobs write the same file"
    every_case = set(sets["train"] + sets["test"])
    for job in jobs:
        case = next((v for k, v in job["wildcards"].items() if k in ("case", "test_case", "train_case")), None)
        if case is None:
            continue
        assert case in every_case
        for path in job["output"] + job["log"]:  # the case's own files: its id is a whole folder or file name
            own = case in Path(path).parts or Path(path).name.startswith((f"{case}.", f"{case}_"))
            assert own, f"{job['rule']}: {path}"
    converted = {j["wildcards"]["case"]: j["input"] for j in jobs if j["rule"] == "convert_image"}
    assert converted["case-011.v1"] == ["data/scans/case-011.v1_img.nii.gz"]
    assert converted["a.nii.v2"] == ["data/scans/a.nii.v2_img.nii.gz"]


@pytest.mark.e2e
def test_no_job_puts_case_lists_on_a_command_line(big_dry_run):
    """Every rule runs a script, which reads its inputs from the snakemake object; only wildcards (one case id)
    reach a job's command line (a cluster job's --target-jobs), so 200 cases cannot make one over-long."""
    _, _, text = big_dry_run
    blocks = rule_blocks()
    for rule in job_stats(text):
        if rule == "all":
            continue
        assert re.search(r"^\s+script:", blocks[rule], flags=re.MULTILINE), f"rule {rule} runs no script"
    for rule, block in blocks.items():
        assert not re.search(r"^\s+(shell|run|wrapper|notebook|cwl):", block, flags=re.MULTILINE), rule
    longest = max(len(",".join(f"{k}={v}" for k, v in j["wildcards"].items())) for j in planned_jobs(text))
    assert longest <= len("test_case=") + 64
    widest = max(len(j["input"]) for j in planned_jobs(text))
    assert widest > 5 * N_CASES  # some jobs do take thousands of files: through the snakemake object only


def test_no_code_builds_a_shell_command():
    """Nothing in the package or the step scripts runs a shell or passes a string command to a process."""
    files = sorted((REPO / "src" / "carve").rglob("*.py")) + sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert len(files) > 40
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            assert name not in ("os.system", "os.popen", "os.execl", "os.execlp", "os.spawnl"), f"{path}: {name}"
            for keyword in node.keywords:
                assert not (keyword.arg == "shell" and ast.unparse(keyword.value) != "False"), f"{path}: {name}"
            if name.startswith("subprocess."):
                assert node.args and isinstance(node.args[0], ast.List), f"{path}: {name} without an argument list"
