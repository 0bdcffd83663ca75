"""Manifest hashing and drift detection on a small fake run (carve.pipeline.provenance)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from carve.pipeline.provenance import (
    MANIFEST_FORMAT,
    Drift,
    code_tree_sha256,
    load_manifest,
    main,
    sha256_file,
    verify_manifest,
    write_manifest,
)

CONFIG = {"results": "results/x", "folds": 2, "labels": {"1": "organ"}, "mesh": {"smoothing_iterations": 4}}


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def run(tmp_path):
    """A results folder with outputs, logs, a DICOM-like input folder inside and a label file outside."""
    results = tmp_path / "work" / "results" / "x"
    _write(results / "plans.json", b'{"patch": [8, 16, 16]}')
    _write(results / "predictions" / "a.nii.gz", b"\x1f\x8b prediction a")
    _write(results / "meshes" / "a" / "organ.stl", b"solid organ")
    _write(results / "meshes" / "a" / ".snakemake_timestamp", b"")
    _write(results / "logs" / "plan" / "plan.log", b"a log line")
    _write(results / "benchmarks" / "plan" / "plan.tsv", b"s\n1.0\n")
    dicom = results / "data" / "dicom" / "a"
    for i in range(3):
        _write(dicom / f"IM{i:04d}.dcm", bytes([i]) * 10)
    sheet = _write(results / "data" / "cases.tsv", b"case\timage\tlabel\trole\n")
    label = _write(tmp_path / "elsewhere" / "a_label.nii.gz", b"label a")
    code = tmp_path / "code"
    _write(code / "src" / "carve" / "m.py", b"x = 1\n")
    _write(code / "rules" / "r.smk", b"rule r:\n")
    _write(code / "Snakefile", b'include: "rules/r.smk"\n')
    lock = _write(code / "requirements.lock", b"pytest==0.0.1\nnot-a-real-package-xyz==1.0\n")
    out = results / "manifest.json"
    write_manifest(results, CONFIG, [sheet, dicom, label], out, code_root=code, lock_file=lock)
    return results, out, label, code


def test_sha256_of_a_known_string(tmp_path):
    path = _write(tmp_path / "abc", b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_manifest_records_inputs_outputs_config_and_versions(run):
    results, out, label, _ = run
    manifest = load_manifest(out)
    assert manifest["format"] == MANIFEST_FORMAT
    # inputs: every file of the DICOM folder, the sheet, the label outside by its absolute path
    assert set(manifest["inputs"]) == {
        "data/cases.tsv",
        "data/dicom/a/IM0000.dcm",
        "data/dicom/a/IM0001.dcm",
        "data/dicom/a/IM0002.dcm",
        label.resolve().as_posix(),
    }
    assert manifest["input_folders"] == ["data/dicom/a"]
    assert manifest["inputs"]["data/dicom/a/IM0001.dcm"] == hashlib.sha256(b"\x01" * 10).hexdigest()
    # outputs: no logs, benchmarks, timestamps, manifest, nor the inputs that live in the results folder
    assert set(manifest["outputs"]) == {"plans.json", "predictions/a.nii.gz", "meshes/a/organ.stl"}
    assert manifest["outputs"]["meshes/a/organ.stl"] == hashlib.sha256(b"solid organ").hexdigest()
    assert manifest["config"] == CONFIG
    assert manifest["packages"]["pytest"]["locked"] == "0.0.1"
    assert manifest["packages"]["pytest"]["installed"] not in (None, "0.0.1")
    assert manifest["packages"]["not-a-real-package-xyz"] == {"locked": "1.0", "installed": None}
    assert manifest["code"]["git_commit"] is None  # the fake code folder is no git checkout
    assert len(manifest["code"]["tree_sha256"]) == 64
    assert manifest["python"].count(".") == 2 and manifest["carve_version"]


def test_manifest_is_byte_identical_when_nothing_changed(run, tmp_path):
    results, out, label, code = run
    again = tmp_path / "again.json"
    sources = [results / "data" / "cases.tsv", results / "data" / "dicom" / "a", label]
    write_manifest(results, CONFIG, sources, again, code_root=code, lock_file=code / "requirements.lock")
    assert again.read_bytes() == out.read_bytes()


def test_clean_run_verifies(run):
    _, out, _, _ = run
    assert verify_manifest(out) == []
    assert main(["verify", str(out)]) == 0


def test_tampered_missing_and_extra_outputs_are_reported(run, capsys):
    results, out, _, _ = run
    _write(results / "predictions" / "a.nii.gz", b"\x1f\x8b prediction A")
    (results / "plans.json").unlink()
    _write(results / "metrics" / "new.tsv", b"extra")
    _write(results / "logs" / "plan" / "other.log", b"logs are not recorded")
    rows = verify_manifest(out)
    assert {(r.kind, r.section, r.path) for r in rows} == {
        ("changed", "output", "predictions/a.nii.gz"),
        ("missing", "output", "plans.json"),
        ("extra", "output", "metrics/new.tsv"),
    }
    changed = next(r for r in rows if r.kind == "changed")
    assert changed.actual_sha256 == hashlib.sha256(b"\x1f\x8b prediction A").hexdigest()
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "predictions/a.nii.gz" in printed and "3 file(s) drifted" in printed


def test_input_drift_is_reported_as_input(run):
    results, out, label, _ = run
    _write(label, b"label a, edited")
    _write(results / "data" / "dicom" / "a" / "IM0003.dcm", b"a slice more")
    (results / "data" / "dicom" / "a" / "IM0000.dcm").unlink()
    rows = verify_manifest(out)
    assert {(r.kind, r.section, r.path) for r in rows} == {
        ("changed", "input", label.resolve().as_posix()),
        ("extra", "input", "data/dicom/a/IM0003.dcm"),
        ("missing", "input", "data/dicom/a/IM0000.dcm"),
    }
    assert all(isinstance(r, Drift) and str(r).startswith(r.kind) for r in rows)


def test_a_moved_results_folder_still_verifies(run, tmp_path):
    results, _, _, _ = run
    moved = tmp_path / "archive" / "x"
    shutil.copytree(results, moved)
    assert verify_manifest(moved / "manifest.json") == []
    _write(moved / "plans.json", b"{}")
    assert [r.path for r in verify_manifest(moved / "manifest.json")] == ["plans.json"]


def test_loaded_manifest_needs_its_results_folder(run):
    results, out, _, _ = run
    manifest = json.loads(out.read_text())
    assert verify_manifest(manifest, results) == []
    with pytest.raises(ValueError, match="results_dir"):
        verify_manifest(manifest)


def test_code_tree_hash_follows_sources_not_caches(run):
    _, _, _, code = run
    before = code_tree_sha256(code)
    _write(code / "src" / "carve" / "__pycache__" / "m.cpython-311.pyc", b"\x00cache")
    _write(code / "docs" / "notes.md", b"not code")
    assert code_tree_sha256(code) == before
    _write(code / "rules" / "r.smk", b"rule r:\n    threads: 2\n")
    assert code_tree_sha256(code) != before


def test_not_a_manifest_is_refused(tmp_path, capsys):
    bogus = _write(tmp_path / "manifest.json", b'{"hello": 1}')
    with pytest.raises(ValueError, match="not a carve manifest"):
        load_manifest(bogus)
    assert main(["verify", str(bogus)]) == 2
    assert "not a carve manifest" in capsys.readouterr().err


def test_missing_input_is_a_clear_error(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    with pytest.raises(FileNotFoundError, match="nowhere.nii.gz"):
        write_manifest(results, CONFIG, [tmp_path / "nowhere.nii.gz"], results / "manifest.json")


def test_two_manifests_differ_settings_first(run, tmp_path, capsys):
    from carve.pipeline.provenance import load_manifest, manifest_differences, print_comparison

    results, out, label, code = run
    first = load_manifest(out)
    second = json.loads(json.dumps(first))
    second["config"] = {**second["config"], "seed": 7}
    second["hardware"] = {**second["hardware"], "cpu": "Another CPU", "bf16_units": "amx"}
    second["outputs"]["plans.json"] = "0" * 64
    rows = manifest_differences(first, second)
    assert [(r.section, r.key) for r in rows] == [
        ("machine", "bf16_units"), ("machine", "cpu"), ("config", "seed"), ("outputs", "plans.json")
    ]  # fmt: skip
    assert manifest_differences(first, first) == []
    other = tmp_path / "other.json"
    other.write_text(json.dumps(second))
    assert print_comparison(out, other) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("first difference: machine  bf16_units:") and "outputs 1" in printed
    assert print_comparison(out, out) == 0


def test_the_manifest_records_the_machine_and_how_models_trained(tmp_path):
    from carve.pipeline.provenance import build_manifest

    results = tmp_path / "results"
    _write(results / "plans.json", json.dumps({"training": {"iterations": 600, "from": "time_budget_min"}}).encode())
    fold = {"train": {"iterations": 600}, "runtime": {"device": "cpu", "threads": 2, "precision": "fp32"}}
    _write(results / "models" / "fold_0" / "config.json", json.dumps(fold).encode())
    manifest = build_manifest(results, {}, [], code_root=tmp_path, lock_file=tmp_path / "none.lock")
    assert manifest["training"] == {
        "plan": {"iterations": 600, "from": "time_budget_min"},
        "inference": None,
        "models": {"fold_0": {"iterations": 600, "device": "cpu", "threads": 2, "precision": "fp32"}},
    }
    decision = {
        "format": "x",
        "precision": "bf16",
        "precision_from": "auto: timed",
        "device": "cpu",
        "batch_windows": 2,
    }
    _write(results / "inference_precision.json", json.dumps(decision).encode())
    manifest = build_manifest(results, {}, [], code_root=tmp_path, lock_file=tmp_path / "none.lock")
    assert manifest["training"]["inference"] == {"precision": "bf16", "precision_from": "auto: timed", "device": "cpu"}
    assert manifest["hardware"]["cpu"] and "bf16_units" in manifest["hardware"]
