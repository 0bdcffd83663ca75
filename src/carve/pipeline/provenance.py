"""Provenance: a ``manifest.json`` that records what a run read, wrote and ran with, and a check for drift.

The manifest holds the sha256 of every input file (a DICOM folder: every file in it), of every file under the
results folder (except ``logs/``, ``benchmarks/``, Snakemake's ``.snakemake_timestamp`` markers and the manifest
itself; files that are inputs, such as the generated demo data, are listed once, as inputs), the resolved
configuration, the installed versions of the locked packages, the carve and code versions, Python and the
platform, the CPU (model, the features that change carve's kernels, bf16 units: :mod:`carve.machine`) and how
each model trained (iterations, device, threads, precision; the plan's training budget). It holds no time stamp
and no host name, so two runs that produce the same bytes on one machine write the same manifest.

Two manifests are compared with :func:`manifest_differences` (``carve verify A --against B``): settings first
(code, software, machine, configuration, training), then inputs, then outputs, so the first difference named is
the likeliest reason for the rest.

Paths: a file inside the results folder is named relative to it (the manifest's folder), any other input by its
absolute path, so a results folder can be moved and still verified.

    python -m carve.pipeline.provenance verify results/demo/manifest.json    # exit 1 and a list when anything drifted
    python -m carve.pipeline.provenance verify a/manifest.json --against b/manifest.json   # why two runs differ
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carve import machine
from carve.errors import InputError

MANIFEST_FORMAT = "carve-manifest/1"
MANIFEST_NAME = "manifest.json"
SKIPPED_RESULT_DIRS = ("logs", "benchmarks")
SKIPPED_NAMES = (".snakemake_timestamp",)
CODE_PARTS = ("src", "rules", "workflow", "Snakefile")
CODE_SKIPPED = ("__pycache__", ".pytest_cache", ".ruff_cache")
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Drift:
    """One file that no longer matches the manifest: ``missing``, ``changed`` or ``extra``."""

    kind: str
    section: str  # "input" or "output"
    path: str
    expected_sha256: str | None
    actual_sha256: str | None

    def __str__(self) -> str:
        detail = {
            "missing": f"expected sha256 {self.expected_sha256}",
            "changed": f"expected sha256 {self.expected_sha256}, now {self.actual_sha256}",
            "extra": f"not in the manifest, sha256 {self.actual_sha256}",
        }[self.kind]
        return f"{self.kind:8s} {self.section:6s} {self.path}: {detail}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _files_below(folder: Path) -> list[Path]:
    """Every regular file below ``folder``, sorted, without Snakemake's directory markers."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in SKIPPED_NAMES)


def _name(path: Path, results_dir: Path) -> str:
    """A file's name in the manifest: relative to the results folder when inside it, else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(results_dir.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _locate(name: str, results_dir: Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() else results_dir / path


def input_files(inputs: Iterable[str | os.PathLike], results_dir: Path) -> tuple[dict[str, str], list[str]]:
    """sha256 of every input file (folders: every file below them) and the names of the input folders."""
    files: dict[str, str] = {}
    folders: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folders.append(_name(path, results_dir))
            members = _files_below(path)
        elif path.is_file():
            members = [path]
        else:
            raise FileNotFoundError(f"provenance: input {path} does not exist")
        for member in members:
            files[_name(member, results_dir)] = sha256_file(member)
    return dict(sorted(files.items())), sorted(set(folders))


def _is_recorded_output(rel: Path) -> bool:
    if rel.parts[0] in SKIPPED_RESULT_DIRS or rel.name in SKIPPED_NAMES:
        return False
    return rel.as_posix() != MANIFEST_NAME


def output_files(results_dir: Path, skip: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of every file under the results folder but logs, benchmarks, the manifest and ``skip``."""
    skipped = set(skip)
    out = {}
    for path in _files_below(results_dir):
        rel = path.relative_to(results_dir)
        if _is_recorded_output(rel) and rel.as_posix() not in skipped:
            out[rel.as_posix()] = sha256_file(path)
    return out


def locked_packages(lock_file: Path | None) -> dict[str, dict[str, str | None]]:
    """For each ``name==version`` of the lock: the locked and the installed version (None when missing)."""
    if lock_file is None or not lock_file.is_file():
        return {}
    packages = {}
    for line in lock_file.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, locked = (s.strip() for s in line.split("==", 1))
        try:
            installed: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        packages[name] = {"locked": locked, "installed": installed}
    return dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))


def code_tree_sha256(code_root: Path) -> str:
    """sha256 over ``src/``, ``rules/``, ``workflow/`` and ``Snakefile``: of the lines '<sha256>  <path>'."""
    lines = []
    for part in CODE_PARTS:
        path = code_root / part
        files = [path] if path.is_file() else _files_below(path) if path.is_dir() else []
        for file in files:
            rel = file.relative_to(code_root)
            if any(p in CODE_SKIPPED or p.endswith(".egg-info") for p in rel.parts) or file.suffix == ".pyc":
                continue
            lines.append(f"{sha256_file(file)}  {rel.as_posix()}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda s: s[66:])).encode()).hexdigest()


def _git(code_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(code_root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(code_root: Path) -> dict[str, Any]:
    commit = _git(code_root, "rev-parse", "HEAD")
    status = _git(code_root, "status", "--porcelain", "--", *CODE_PARTS) if commit else None
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "tree_sha256": code_tree_sha256(code_root),
        "tree": list(CODE_PARTS),
    }


def _torch_build() -> dict[str, str | None]:
    try:
        import torch
    except ImportError:
        return {}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": None if cudnn is None else str(cudnn)}


def _json_or_none(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def training_record(results_dir: Path) -> dict[str, Any]:
    """How the run's models trained and predicted: the plan's training budget (plans.json ``training``), per model
    folder (``models/<name>/config.json``) its iterations and runtime (device, threads, precision), and the
    precision predictions ran in (``inference_precision.json``: precision, why, device)."""
    plans = _json_or_none(results_dir / "plans.json")
    inference = _json_or_none(results_dir / "inference_precision.json")
    record: dict[str, Any] = {
        "plan": plans.get("training") if isinstance(plans, dict) else None,
        "inference": None,
        "models": {},
    }
    if isinstance(inference, dict):
        record["inference"] = {k: inference.get(k) for k in ("precision", "precision_from", "device")}
    for config in sorted(results_dir.glob("models/*/config.json")):
        try:
            resolved = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        record["models"][config.parent.name] = {
            "iterations": resolved.get("train", {}).get("iterations"),
            **resolved.get("runtime", {}),
        }
    return record


def build_manifest(
    results_dir: str | os.PathLike,
    config: Mapping[str, Any],
    inputs: Iterable[str | os.PathLike],
    *,
    code_root: str | os.PathLike | None = None,
    lock_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    from carve import __version__

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"provenance: results folder {results_dir} does not exist")
    code_root = Path(code_root) if code_root is not None else Path(__file__).resolve().parents[3]
    lock = Path(lock_file) if lock_file is not None else code_root / "requirements.lock"
    inputs_sha, folders = input_files(inputs, results_dir)
    return {
        "format": MANIFEST_FORMAT,
        "carve_version": __version__,
        "code": code_version(code_root),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": _torch_build(),
        "hardware": machine.describe(),
        "training": training_record(results_dir),
        "packages": locked_packages(lock),
        "lock_sha256": sha256_file(lock) if lock.is_file() else None,
        "config": json.loads(json.dumps(dict(config), default=str)),
        "input_folders": folders,
        "inputs": inputs_sha,
        "outputs": output_files(results_dir, skip=inputs_sha),
    }


def write_manifest(
    results_dir: str | os.PathLike,
    config: Mapping[str, Any],
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    code_root: str | os.PathLike | None = None,
    lock_file: str | os.PathLike | None = None,
) -> Path:
    """Write the manifest of ``results_dir`` to ``out`` (normally ``<results>/manifest.json``)."""
    from carve.imaging.io import atomic_write_text

    manifest = build_manifest(results_dir, config, inputs, code_root=code_root, lock_file=lock_file)
    return atomic_write_text(out, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: not a carve manifest (format {MANIFEST_FORMAT} expected)")
    return manifest


def _compare(section: str, recorded: Mapping[str, str], present: Mapping[str, Path]) -> list[Drift]:
    rows = []
    for name, expected in recorded.items():
        path = present.get(name)
        if path is None:
            rows.append(Drift("missing", section, name, expected, None))
        elif (actual := sha256_file(path)) != expected:
            rows.append(Drift("changed", section, name, expected, actual))
    for name in sorted(set(present) - set(recorded)):
        rows.append(Drift("extra", section, name, None, sha256_file(present[name])))
    return rows


def verify_manifest(
    manifest: str | os.PathLike | Mapping[str, Any], results_dir: str | os.PathLike | None = None
) -> list[Drift]:
    """Drift rows (missing, changed, extra files) between a manifest and the files as they are now.

    ``manifest`` is the path of a manifest (its folder is the results folder) or its loaded content (then
    ``results_dir`` is needed). Returns a list of :class:`Drift`, empty when nothing drifted.
    """
    if not isinstance(manifest, Mapping):
        results_dir = Path(manifest).parent if results_dir is None else results_dir
        manifest = load_manifest(manifest)
    if results_dir is None:
        raise ValueError("verify_manifest: results_dir is needed with a loaded manifest")
    results_dir = Path(results_dir)
    inputs: dict[str, str] = manifest["inputs"]
    present_inputs = {n: _locate(n, results_dir) for n in inputs if _locate(n, results_dir).is_file()}
    for folder in manifest.get("input_folders", []):
        path = _locate(folder, results_dir)
        if path.is_dir():
            present_inputs.update({_name(p, results_dir): p for p in _files_below(path)})
    # files in the results folder that are inputs (the generated demo data) are checked as inputs only
    input_prefixes = tuple(f"{f}/" for f in manifest.get("input_folders", []) if not Path(f).is_absolute())
    present_outputs = {
        rel: results_dir / rel
        for rel in (p.relative_to(results_dir).as_posix() for p in _files_below(results_dir))
        if _is_recorded_output(Path(rel)) and rel not in inputs and not rel.startswith(input_prefixes)
    }
    return _compare("input", inputs, present_inputs) + _compare("output", manifest["outputs"], present_outputs)


def print_verification(manifest_path: Path, results_dir: Path | None = None) -> int:
    """Verify a manifest against the files below ``results_dir`` (default: the manifest's folder), print one line
    per drifted file and a summary; 0 when nothing drifted, 1 otherwise. An unreadable manifest raises."""
    manifest = load_manifest(manifest_path)
    rows = verify_manifest(manifest, results_dir if results_dir is not None else Path(manifest_path).parent)
    for row in rows:
        print(row)
    n_in, n_out = len(manifest["inputs"]), len(manifest["outputs"])
    if rows:
        print(f"{manifest_path}: {len(rows)} file(s) drifted ({n_in} inputs, {n_out} outputs recorded)")
        return 1
    print(f"{manifest_path}: ok, {n_in} inputs and {n_out} outputs as recorded")
    return 0


@dataclass(frozen=True)
class Difference:
    """One entry that differs between two manifests (None: absent from that manifest)."""

    section: str  # code, software, machine, config, training, inputs, outputs
    key: str
    first: Any
    second: Any

    def __str__(self) -> str:
        return f"{self.section:8s} {self.key}: {_short(self.first)} | {_short(self.second)}"


def _short(value: Any) -> str:
    text = "absent" if value is None else json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as dotted keys (lists and scalars are leaves)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in sorted(value, key=str):
            out.update(_flat(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _sections(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A manifest's entries by section, in the order that explains differences: settings before files."""
    code = manifest.get("code", {})
    software = {
        "python": manifest.get("python"),
        "implementation": manifest.get("implementation"),
        "platform": manifest.get("platform"),
        **_flat(manifest.get("torch", {}), "torch"),
        **{f"packages.{n}": v.get("installed") for n, v in manifest.get("packages", {}).items()},
    }
    return {
        "code": {
            "carve_version": manifest.get("carve_version"),
            "git_commit": code.get("git_commit"),
            "tree_sha256": code.get("tree_sha256"),
            "lock_sha256": manifest.get("lock_sha256"),
        },
        "software": software,
        "machine": {"architecture": manifest.get("machine"), **_flat(manifest.get("hardware", {}), "")},
        "config": _flat(manifest.get("config", {}), ""),
        "training": _flat(manifest.get("training", {}), ""),
        "inputs": dict(manifest.get("inputs", {})),
        "outputs": dict(manifest.get("outputs", {})),
    }


def manifest_differences(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[Difference]:
    """Every entry that differs between two loaded manifests, settings first (code, software, machine,
    configuration, training), then inputs, then outputs; within a section in key order. Files are compared by
    name and sha256."""
    a, b = _sections(first), _sections(second)
    rows = []
    for section in a:
        for key in sorted(set(a[section]) | set(b[section])):
            if a[section].get(key) != b[section].get(key):
                rows.append(Difference(section, key, a[section].get(key), b[section].get(key)))
    return rows


def print_comparison(first_path: Path, second_path: Path, limit: int = 40) -> int:
    """Compare two manifests: the first difference (the likeliest reason for the rest), then up to ``limit``
    rows and a count per section; 0 when they agree, 1 otherwise."""
    rows = manifest_differences(load_manifest(first_path), load_manifest(second_path))
    if not rows:
        print(f"{first_path} and {second_path}: the same settings, inputs and outputs")
        return 0
    print(f"first difference: {rows[0]}")
    print(f"(values: {first_path} | {second_path})")
    for row in rows[:limit]:
        print(row)
    if len(rows) > limit:
        print(f"... {len(rows) - limit} more")
    counts = {}
    for row in rows:
        counts[row.section] = counts.get(row.section, 0) + 1
    print("differences by section: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carve.pipeline.provenance", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="compare a manifest with the files as they are now")
    verify.add_argument("manifest", type=Path, help="a run's manifest.json (its folder is the results folder)")
    verify.add_argument("--against", type=Path, help="another run's manifest.json: say how the two runs differ")
    args = parser.parse_args(argv)
    try:
        if args.against is not None:
            return print_comparison(args.manifest, args.against)
        return print_verification(args.manifest)
    except ValueError as err:
        print(f"carve error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
