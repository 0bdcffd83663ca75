"""Bad cases sheets: every problem is named (row, case, column) before any job runs, no case id can lead a path out
of the results folder, and the jobs a sheet plans are the right ones (Snakefile dry runs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, job_stats

from carve.imaging.io import Geometry, write_image
from carve.pipeline.sheet import SheetError, check_case_id, check_folds, load_sheet

HEADER = "case\timage\tlabel\trole"


def tiny_case(folder: Path, name: str, label: bool = True) -> None:
    """A 4x4x4 image (and label) named ``<name>_img.nii.gz`` (``<name>_lab.nii.gz``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{name}_img.nii.gz", np.zeros((4, 4, 4), np.float32), Geometry((2.0, 1.0, 1.0)))
    if label:
        write_image(folder / f"{name}_lab.nii.gz", np.zeros((4, 4, 4), np.uint8), Geometry((2.0, 1.0, 1.0)))


def write_sheet(path: Path, rows: list[tuple[str, ...]], header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    """``snakemake --dry-run`` of the project's Snakefile in ``workdir`` with ``config`` (stderr into stdout)."""
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({"cases": "x", "labels": {1: "a"}}))
    (workdir / "run.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "run.yaml"), "--dry-run", "--cores", "1"]  # fmt: skip
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir)


def planned_jobs(text: str) -> list[dict]:
    """The jobs of a dry run: rule, input, output, log (lists of paths) and wildcards (dict), one per job."""
    jobs: list[dict] = []
    for line in text.splitlines():
        if (rule := re.fullmatch(r"(?:local)?rule (\w+):", line.strip())) is not None:
            jobs.append({"rule": rule.group(1), "input": [], "output": [], "log": [], "benchmark": [], "wildcards": {}})
        elif jobs and (field := re.fullmatch(r"    (input|output|log|benchmark|wildcards): (.*)", line)) is not None:
            key, value = field.groups()
            items = [v.strip() for v in value.split(", ")]
            if key == "wildcards":
                jobs[-1][key] = dict(item.split("=", 1) for item in items)
            else:
                jobs[-1][key] = items
    return jobs


def assert_inside(workdir: Path, results: str, jobs: list[dict]) -> None:
    """Every output, log and benchmark of every job lies below ``workdir / results``."""
    root = (workdir / results).resolve()
    for job in jobs:
        for path in job["output"] + job["log"] + job["benchmark"]:
            assert (workdir / path).resolve().is_relative_to(root), f"{job['rule']}: {path} leaves {results}"


# ---- case ids ----------------------------------------------------------------------------------------------------
HOSTILE_IDS = [
    "a b",  # space
    "sub/01",  # slash
    "../escape",  # parent folder
    "a/../../b",
    "a..b",
    "/etc/passwd",
    "ü01",  # non-ASCII
    "Ｓ01",  # full-width letter
    "s01;rm -rf ~",  # shell metacharacters
    "$(touch pwned)",
    "`id`",
    "a|b",
    "a&b",
    "a>b",
    "*",
    "-rf",  # an option, were it ever on a command line
    ".hidden",
    "~root",
    "a" * 65,  # too long for a file name component on some systems
    "b.nii.gz",  # carve's suffixes: 'b.nii.gz' and 'b' would clash (uncertainty/b.nii.gz and uncertainty/b.nii.gz/)
    "b.tsv",
]


@pytest.mark.parametrize("case", HOSTILE_IDS)
def test_hostile_case_id_refused_and_named(tmp_path, case):
    tiny_case(tmp_path, "x")
    sheet = write_sheet(tmp_path / "cases.tsv", [(case, "x_img.nii.gz", "x_lab.nii.gz", "train")])
    with pytest.raises(SheetError) as err:
        load_sheet(sheet)
    lines = str(err.value).splitlines()
    assert lines[0] == "problems in the cases sheet:"
    assert lines[1].startswith(f"{sheet}: row 2, case '{case}': case id must ")


def test_accepted_case_ids_stay_inside_the_results_folder(tmp_path):
    """Any id the sheet accepts is one plain file-name component: the paths built from it stay in results."""
    results = (tmp_path / "results").resolve()
    for case in ["a", "A.b-c_9", "sub-01.", "x-", "9" * 64, "a.b.c", "a.-b", "a.nii.v2"]:
        assert check_case_id(case) is None
        for path in (f"nifti/{case}/image.nii.gz", f"cv/{case}.nii.gz", f"meshes/{case}/organ.stl"):
            assert (results / path).resolve().is_relative_to(results)
            assert (results / path).resolve().relative_to(results).parts[0] in ("nifti", "cv", "meshes")
    for case in HOSTILE_IDS:
        assert check_case_id(case) is not None


def test_duplicate_ids_exact_and_by_letter_case(tmp_path):
    tiny_case(tmp_path, "x")
    rows = [("sub01", "x_img.nii.gz", "x_lab.nii.gz", "train"), ("sub01", "x_img.nii.gz", "x_lab.nii.gz", "train"),
            ("Sub01", "x_img.nii.gz", "x_lab.nii.gz", "train")]  # fmt: skip
    with pytest.raises(SheetError) as err:
        load_sheet(write_sheet(tmp_path / "cases.tsv", rows))
    sheet = tmp_path / "cases.tsv"
    assert str(err.value).splitlines()[1:] == [
        f"{sheet}: row 3, case 'sub01': duplicate case id (first on row 2)",
        f"{sheet}: row 4, case 'Sub01': case id differs from 'sub01' (row 2) only in upper/lower case; their files "
        "would overwrite each other on case-insensitive file systems (macOS, Windows)",
    ]


# ---- the sheet as a file -----------------------------------------------------------------------------------------
def test_missing_columns_named(tmp_path):
    sheet = write_sheet(tmp_path / "cases.tsv", [("a", "x")], header="case\timage")
    with pytest.raises(SheetError) as err:
        load_sheet(sheet)
    assert str(err.value) == (
        f"{sheet}: missing column(s) label, role; a cases sheet needs case, image, label, role (found case, image)"
    )


def test_comma_separated_sheet_explained(tmp_path):
    sheet = tmp_path / "cases.csv"
    sheet.write_text("case,image,label,role\na,x_img.nii.gz,x_lab.nii.gz,train\n")
    with pytest.raises(SheetError, match="it looks comma-separated, carve reads tab-separated sheets$"):
        load_sheet(sheet)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the sheet is empty; it needs a header row: case, image, label, role (tab-separated)"),
        (b"  \n\n", "the sheet is empty; it needs a header row: case, image, label, role (tab-separated)"),
        (HEADER.encode() + b"\n", "the sheet has no cases"),
        (HEADER.encode() + b"\na\tx_img.nii.gz\txl\xe9.nii.gz\ttrain\n", "is not UTF-8 text ("),
    ],
)
def test_empty_or_undecodable_sheet_refused(tmp_path, content, message):
    sheet = tmp_path / "cases.tsv"
    sheet.write_bytes(content)
    with pytest.raises(SheetError, match=re.escape(message)) as err:
        load_sheet(sheet)
    assert str(sheet) in str(err.value)


def test_stray_tab_refused_not_shifted(tmp_path):
    """One field too many on the first row made pandas take 'case' for an index and shift every value."""
    tiny_case(tmp_path, "x")
    rows = [("a", "x_img.nii.gz", "x_lab.nii.gz", "train", "note"), ("b", "x_img.nii.gz", "x_lab.nii.gz", "train")]
    sheet = write_sheet(tmp_path / "cases.tsv", rows)
    with pytest.raises(SheetError) as err:
        load_sheet(sheet)
    assert str(err.value).splitlines()[1:] == [f"{sheet}: row 2: 5 fields, the header has 4 (a stray tab?)"]
    trailing = write_sheet(tmp_path / "trailing.tsv", [("a", "x_img.nii.gz", "x_lab.nii.gz", "train", "", "")])
    assert [c.case for c in load_sheet(trailing)] == ["a"]  # empty trailing fields (spreadsheet export) are fine


def test_spreadsheet_byte_order_mark_and_crlf_read(tmp_path):
    tiny_case(tmp_path, "x")
    sheet = tmp_path / "cases.tsv"
    text = f"{HEADER}\na\tx_img.nii.gz\tx_lab.nii.gz\ttrain\nb \t x_img.nii.gz\t\ttest \n"
    sheet.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    cases = load_sheet(sheet)
    assert [(c.case, c.image, c.label, c.role) for c in cases] == [
        ("a", tmp_path / "x_img.nii.gz", tmp_path / "x_lab.nii.gz", "train"),
        ("b", tmp_path / "x_img.nii.gz", None, "test"),
    ]


def test_training_case_without_label_and_test_case_without_image(tmp_path):
    tiny_case(tmp_path, "x")
    rows = [("a", "x_img.nii.gz", "", "train"), ("t", "", "", "test"), ("u", "x_img.nii.gz", "gone.nii.gz", "test")]
    sheet = write_sheet(tmp_path / "cases.tsv", rows)
    with pytest.raises(SheetError) as err:
        load_sheet(sheet)
    assert str(err.value).splitlines()[1:] == [
        f"{sheet}: row 2, case 'a': a training case needs a label",
        f"{sheet}: row 3, case 't': no image given",
        f"{sheet}: row 4, case 'u': label {tmp_path / 'gone.nii.gz'} does not exist",
    ]


def test_fewer_training_cases_than_folds(tmp_path):
    tiny_case(tmp_path, "x")
    rows = [(c, "x_img.nii.gz", "x_lab.nii.gz", "train") for c in ("a", "b", "c")] + [("t", "x_img.nii.gz", "", "test")]
    sheet = write_sheet(tmp_path / "cases.tsv", rows)
    cases = load_sheet(sheet)
    check_folds(cases, 3, sheet)
    with pytest.raises(SheetError) as err:
        check_folds(cases, 5, sheet)
    assert str(err.value) == (
        f"{sheet}: 3 training case(s) for 5 folds; each fold needs at least one held-out case and one training case, "
        "so give at least 5 training cases or fewer folds"
    )


def test_paths_relative_to_the_sheet_parent_or_absolute(tmp_path):
    tiny_case(tmp_path / "data" / "scans", "a")
    tiny_case(tmp_path / "elsewhere", "b")
    tiny_case(tmp_path / "abs", "c")
    rows = [("a", "scans/a_img.nii.gz", "scans/a_lab.nii.gz", "train"),
            ("b", "../elsewhere/b_img.nii.gz", "../elsewhere/b_lab.nii.gz", "train"),
            ("c", str(tmp_path / "abs" / "c_img.nii.gz"), str(tmp_path / "abs" / "c_lab.nii.gz"), "train")]  # fmt: skip
    cases = load_sheet(write_sheet(tmp_path / "data" / "cases.tsv", rows))
    for case in cases:
        assert case.image.resolve().is_file() and case.label.resolve().is_file()
    assert cases[1].image.resolve() == tmp_path / "elsewhere" / "b_img.nii.gz"
    assert cases[2].image == tmp_path / "abs" / "c_img.nii.gz"


# ---- Snakefile dry runs ------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_dry_run_refuses_hostile_ids_before_any_job(tmp_path):
    tiny_case(tmp_path / "data", "x")
    rows = [(c, "x_img.nii.gz", "x_lab.nii.gz", "train") for c in ("ok1", "ok2", "../up", "a b", "$(id)", "ok1")]
    write_sheet(tmp_path / "data" / "cases.tsv", rows)
    out = dry_run(tmp_path, {"cases": "data/cases.tsv", "results": "results/r", "labels": {1: "a"}, "folds": 2})
    assert out.returncode != 0
    for row, case in [(4, "../up"), (5, "a b"), (6, "$(id)")]:
        assert f"data/cases.tsv: row {row}, case '{case}': case id must be 1-64 ASCII letters" in out.stdout
    assert "data/cases.tsv: row 7, case 'ok1': duplicate case id (first on row 2)" in out.stdout
    assert job_stats(out.stdout) == {} and not (tmp_path / "results").exists()


@pytest.mark.e2e
def test_dry_run_plans_metrics_for_a_labelled_test_case(tmp_path):
    """A test case with a label is evaluated (set 'test'); one without is predicted but not evaluated. Paths
    relative to the sheet, to its parent and absolute all reach the right files."""
    for name in ("a", "b", "t_lab"):
        tiny_case(tmp_path / "data" / "scans", name)
    tiny_case(tmp_path / "other", "c")
    tiny_case(tmp_path / "data" / "scans", "t_nolab", label=False)
    rows = [("a", "scans/a_img.nii.gz", "scans/a_lab.nii.gz", "train"),
            ("b", "scans/b_img.nii.gz", "scans/b_lab.nii.gz", "train"),
            ("c", "../other/c_img.nii.gz", str(tmp_path / "other" / "c_lab.nii.gz"), "train"),
            ("t_lab", "scans/t_lab_img.nii.gz", "scans/t_lab_lab.nii.gz", "test"),
            ("t_nolab", "scans/t_nolab_img.nii.gz", "", "test")]  # fmt: skip
    write_sheet(tmp_path / "data" / "cases.tsv", rows)
    out = dry_run(tmp_path, {"cases": "data/cases.tsv", "results": "results/r", "labels": {1: "a"}, "folds": 2})
    assert out.returncode == 0, out.stdout[-3000:]
    jobs = planned_jobs(out.stdout)
    by_rule: dict[str, dict[str, dict]] = {}
    for job in jobs:
        wildcards = job["wildcards"]
        case = wildcards.get("case") or wildcards.get("test_case") or wildcards.get("train_case") or ""
        by_rule.setdefault(job["rule"], {})[case] = job
    assert sorted(by_rule["evaluate"]) == ["a", "b", "c", "t_lab"]
    assert by_rule["evaluate"]["t_lab"]["input"] == [
        "results/r/nifti/t_lab/label.nii.gz",
        "results/r/predictions/t_lab.nii.gz",
    ]
    assert by_rule["evaluate"]["a"]["input"][1] == "results/r/cv/a.nii.gz"
    assert sorted(by_rule["convert_label"]) == ["a", "b", "c", "t_lab"]
    assert sorted(by_rule["predict"]) == ["t_lab", "t_nolab"]
    summary = next(j for j in jobs if j["rule"] == "summarise_metrics")
    assert "results/r/metrics/cases/t_lab.tsv" in summary["input"]
    assert not any("t_nolab" in p for p in summary["input"])
    assert by_rule["convert_image"]["c"]["input"] == ["data/../other/c_img.nii.gz"]
    assert by_rule["convert_label"]["c"]["input"][0] == str(tmp_path / "other" / "c_lab.nii.gz")
    stats = job_stats(out.stdout)
    assert stats["evaluate"] == 4 and stats["convert_image"] == 5 and stats["train_fold"] == 2
    assert_inside(tmp_path, "results/r", jobs)
