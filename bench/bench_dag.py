"""Pipeline overhead: Snakemake's dry-run (parse, validate, DAG) time for 10, 100 and 1,000 cases with 5 folds.

    python bench/bench_dag.py            # writes bench/results/dag.md

Each sheet holds 80% training and 20% test cases (tiny NIfTI files); the time is the wall time of
`snakemake --dry-run` in a fresh process, best of the repeats, with the job count it planned.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from carve.imaging.io import Geometry, write_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "dag.md"


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def make_dataset(folder: Path, n_cases: int) -> Path:
    geometry = Geometry((3.0, 1.0, 1.0))
    write_image(folder / "img.nii.gz", np.zeros((4, 8, 8), np.int16), geometry)
    write_image(folder / "lab.nii.gz", np.zeros((4, 8, 8), np.uint8), geometry)
    n_train = int(round(0.8 * n_cases))
    rows = [f"case{i:04d}\timg.nii.gz\tlab.nii.gz\t{'train' if i < n_train else 'test'}" for i in range(n_cases)]
    (folder / "cases.tsv").write_text("case\timage\tlabel\trole\n" + "\n".join(rows) + "\n")
    config = {"cases": str(folder / "cases.tsv"), "results": str(folder / "out"), "labels": {1: "a"}, "folds": 5}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def dry_run(config: Path, workdir: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--dry-run", "--cores", "1", "--quiet", "rules"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    text = done.stdout + done.stderr
    total = next((int(line.split()[-1]) for line in text.splitlines() if line.startswith("total")), -1)
    return seconds, total


def main(sizes=(10, 100, 1000), repeats: int = 2) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = {}
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            configs[n] = make_dataset(folder, n)
        best: dict[int, float] = {}
        jobs: dict[int, int] = {}
        for _ in range(repeats):  # alternate the sizes
            for n in sizes:
                seconds, total = dry_run(configs[n], configs[n].parent)
                best[n] = min(best.get(n, float("inf")), seconds)
                jobs[n] = total
        base = best[sizes[0]]
        for n in sizes:
            per_job_ms = 1000 * (best[n] - base) / max(jobs[n] - jobs[sizes[0]], 1)
            rows.append(f"| {n} | {jobs[n]} | {best[n]:.1f} | {best[n] / base:.2f} | {per_job_ms:.2f} |")
    text = (
        "## Pipeline overhead (Snakemake dry run, 5 folds)\n\n"
        f"Machine: {machine()}. Best of {repeats} fresh `snakemake --dry-run` processes per size.\n\n"
        "| cases | jobs | seconds | ratio to 10 cases | ms per extra job |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    main(repeats=args.repeats)
