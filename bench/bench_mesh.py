"""Benchmark: carve's mesh export against plain scikit-image marching cubes + trimesh, on real CT labels.

    python bench/bench_mesh.py [--repeats 3] [--out bench/results/mesh.md]

Labels: every label of TotalSegmentator's example segmentations in ``$CARVE_SHARED_DATA/ct/
totalsegmentator_example`` (``example_seg``: 41 labels at 3 mm; ``example_seg_dicom``: 31 labels at
2 x 0.98 x 0.98 mm, 20 x 512 x 512 voxels). Per repeat and label, the three exporters run one after the other,
the order rotating from label to label and repeat to repeat; each label's time is its median over the repeats.
What is timed, per label, from the label volume to an STL file on disk:

* carve: ``carve.export.mesh.export_label_meshes`` with the default options (marching cubes on the label's bounding
  box, 10 Taubin iterations, repair, voxel-volume matching, the quality row with Hausdorff distances, STL and
  ``meshes.tsv``);
* carve, no distances: the same with ``surface_distance=False`` (what the quality row's distances cost);
* plain: ``skimage.measure.marching_cubes`` on the zero-padded mask at level 0.5, vertices through the affine,
  ``trimesh.Trimesh(...).export("stl")``.

Volume errors are against the label's voxel volume; Hausdorff distances (carve's definition, docs/mesh.md) are
measured after the timing, for the plain meshes too. The markdown tables go to ``--out`` and to stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread for everyone: the same footing for both exporters

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import trimesh  # noqa: E402
from machine import cpu_model  # noqa: E402
from skimage.measure import marching_cubes  # noqa: E402

from carve.export.mesh import MeshOptions, export_label_meshes  # noqa: E402
from carve.export.mesh_quality import mesh_quality  # noqa: E402
from carve.imaging.io import Geometry, atomic_write_bytes, read_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "mesh.md"
FILES = ("example_seg", "example_seg_dicom")
EXPORTERS = ("carve", "carve, no distances", "plain")


def machine() -> str:
    """One line: CPU model, cores, Python and library versions."""
    model = cpu_model()
    return (
        f"{model}, {os.cpu_count()} cores (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}), Python "
        f"{platform.python_version()}, trimesh {version('trimesh')}, scikit-image {version('scikit-image')}"
    )


def plain_export(labels: np.ndarray, geometry: Geometry, value: int, path: Path) -> trimesh.Trimesh:
    """Marching cubes on the whole zero-padded mask, vertices to LPS mm, trimesh's binary STL."""
    mask = np.pad(labels == value, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(mask, level=0.5)
    mesh = trimesh.Trimesh(vertices=geometry.index_to_world(verts - 1.0), faces=faces)
    atomic_write_bytes(path, mesh.export(file_type="stl"))
    return mesh


def _timed(func: Callable[..., object], *args: object, **kwargs: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = func(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_file(path: Path, repeats: int, work: Path) -> list[dict]:
    """One row per label: median seconds per exporter, volume errors and Hausdorff distances."""
    labels, geometry = read_image(path)
    values = [int(v) for v in np.unique(labels) if v]
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    options = {"carve": MeshOptions(), "carve, no distances": MeshOptions(surface_distance=False)}
    times = {(v, e): [] for v in values for e in EXPORTERS}
    results: dict[tuple[int, str], object] = {}
    turn = 0
    for _ in range(repeats):
        for value in values:
            order = EXPORTERS[turn % 3 :] + EXPORTERS[: turn % 3]
            turn += 1
            for exporter in order:
                out = work / exporter.replace(", ", "_").replace(" ", "_")
                if exporter == "plain":
                    seconds, result = _timed(plain_export, labels, geometry, value, out / f"{value}.stl")
                else:
                    names = {value: str(value)}
                    seconds, result = _timed(
                        export_label_meshes, labels, geometry, names, out, options=options[exporter]
                    )
                times[value, exporter].append(seconds)
                results[value, exporter] = result
    rows = []
    for value in values:
        mask = labels == value
        carve = results[value, "carve"].iloc[0]
        plain = results[value, "plain"]
        plain_quality = mesh_quality(plain, mask, geometry)
        plain_volume = abs(float(plain.volume))  # marching cubes' winding through the affine may be inside out
        voxels = int(mask.sum())
        row = {"file": path.name.split(".")[0], "label": value, "voxels": voxels}
        row.update({f"{e} s": statistics.median(times[value, e]) for e in EXPORTERS})
        row.update(
            carve_volume_error=float(carve["volume_error_rel"]),
            plain_volume_error=plain_volume / (voxels * voxel_mm3) - 1.0,
            carve_hd=float(carve["hausdorff_mm"]),
            plain_hd=plain_quality["hausdorff_mm"],
            carve_watertight=bool(carve["watertight"]),
            plain_watertight=bool(plain.is_watertight),
        )
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:+.2f} %"


def summary_table(rows: list[dict]) -> str:
    lines = [
        "| labels | voxel size (mm) | exporter | total s | median s per mesh | time ratio to plain (total) | "
        "median volume error | largest abs volume error | median Hausdorff mm | watertight |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["file"] for r in rows):
        part = [r for r in rows if r["file"] == name]
        plain_total = sum(r["plain s"] for r in part)
        for exporter in EXPORTERS:
            total = sum(r[f"{exporter} s"] for r in part)
            key = "plain" if exporter == "plain" else "carve"
            errors = [r[f"{key}_volume_error"] for r in part]
            hd = [r[f"{key}_hd"] for r in part]
            tight = sum(r[f"{key}_watertight"] for r in part)
            lines.append(
                f"| {name} ({len(part)}) | {part[0]['spacing']} | {exporter} | {total:.2f} | "
                f"{statistics.median(r[f'{exporter} s'] for r in part):.3f} | {total / plain_total:.2f} | "
                f"{_pct(statistics.median(errors))} | {100 * max(abs(e) for e in errors):.2f} % | "
                f"{statistics.median(hd):.2f} | {tight}/{len(part)} |"
            )
    return "\n".join(lines)


def label_table(rows: list[dict], n: int = 8) -> str:
    lines = [
        "| labels | label | voxels | carve s | carve, no distances s | plain s | ratio carve/plain | "
        "carve volume error | plain volume error | carve Hausdorff mm | plain Hausdorff mm |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["file"] for r in rows):
        part = sorted((r for r in rows if r["file"] == name), key=lambda r: -r["voxels"])[:n]
        for r in part:
            lines.append(
                f"| {name} | {r['label']} | {r['voxels']} | {r['carve s']:.3f} | {r['carve, no distances s']:.3f} | "
                f"{r['plain s']:.3f} | {r['carve s'] / r['plain s']:.2f} | {_pct(r['carve_volume_error'])} | "
                f"{_pct(r['plain_volume_error'])} | {r['carve_hd']:.2f} | {r['plain_hd']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.getLogger("carve").setLevel(logging.ERROR)  # per-mesh warnings (tiny labels) are in the table
    root = Path(os.environ.get("CARVE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    folder = root / "ct" / "totalsegmentator_example"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            _, geometry = read_image(folder / f"{name}.nii.gz")
            spacing = " x ".join(f"{s:g}" for s in geometry.spacing_mm)
            for row in bench_file(folder / f"{name}.nii.gz", args.repeats, Path(tmp) / name):
                rows.append({**row, "spacing": spacing})
    text = "\n".join(
        [
            "# Mesh export benchmark",
            "",
            f"Machine: {machine()}.",
            "",
            f"`python bench/bench_mesh.py --repeats {args.repeats}`: every label of TotalSegmentator's example "
            "segmentations; per label the median of the repeats, exporters alternating (see the script's "
            "docstring). Volume error: mesh volume against the label's voxel volume. Hausdorff: carve's "
            "definition (docs/mesh.md), between the mesh and the label's voxel faces.",
            "",
            summary_table(rows),
            "",
            "The largest labels of each file:",
            "",
            label_table(rows),
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
