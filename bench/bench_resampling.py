"""Benchmark: carve's resampling and preprocessing against nnU-Net's default resampling, on the same real cases.

    CARVE_SHARED_DATA=../shared/data python bench/bench_resampling.py [--repeats 3] [--no-back]
        [--nnunet-python bench/.venv-nnunet/bin/python] [--out bench/results/resampling.md]

nnU-Net runs in its own virtual environment (``bench/.venv-nnunet``: nnunetv2 with a CPU torch), as one worker
process started once; inputs and outputs travel through ``.npy`` files in a temporary folder. Each side is timed
around its call only (imports, file reading and writing excluded), the two sides alternating (carve first in even
repeats, nnU-Net first in odd ones); the tables report the median of ``--repeats`` and the ratio. Both sides run
single-threaded (scipy's ``ndimage``, no torch).

What is timed, per case:

* image (forward): the case's image (float32, as both readers give it) normalised as carve's plan says and
  resampled to the target spacing. carve: ``carve.planning.preprocess.preprocess_image`` (per-image z-score or CT
  clip + z-score; third-order spline, the through-plane axis of an anisotropic grid linearly on its own).
  nnU-Net: ``ZScoreNormalization`` / ``CTNormalization`` (``use_mask_for_norm=False``, the same statistics),
  then ``resample_data_or_seg_to_shape`` with its planner's defaults for data (order 3, ``order_z=0``,
  ``force_separate_z=None``: separate z when a spacing is more than 3x anisotropic). nnU-Net's cropping to the
  non-zero box is left out so that both grids stay the same.
* labels (forward): the label map to the same spacing. carve: ``carve.planning.preprocess.preprocess_labels`` (one-hot
  linear and argmax over the plan's classes). nnU-Net: ``resample_data_or_seg_to_shape`` with its defaults for
  segmentations (``is_seg=True``, order 1 one-hot, ``order_z=0``).
* export (back, unless ``--no-back``): class scores on the target grid back to the case's grid and an argmax,
  as both tools write a prediction. The scores are the one-hot of carve's forward label map (one input for both).
  carve: ``carve.imaging.resample.resize_image(order=1)`` per class into a running argmax, the label part of
  ``carve.prediction.uncertainty.maps_on_grid`` that ``carve.prediction.predict`` calls; nnU-Net:
  ``resample_data_or_seg_to_shape``
  with its probability export defaults (order 1, ``order_z=0``), then ``argmax``.

Cases (``CARVE_SHARED_DATA``, default ``../shared/data`` beside the checkout): a glioblastoma MR (pyradiomics
brain1, 25x256x256 at 6.5x0.78x0.78 mm, tumour mask) to 1 mm isotropic; the TotalSegmentator example CT
(112x101x122 at 3 mm; its 41-structure label map covers the last 30 slices, on ``example_ct_sm``'s grid, label
values renumbered 0..41 as carve's plan requires) to 1.5 mm; hippocampus_001 (35x51x35 at 1 mm, 2 labels) to
0.8 mm. carve's plan would keep each of these datasets at its own spacing (the spacings agree within each), which
would be no resampling at all, so the targets are set here; the table shows both.

Agreement is measured on the last repeat's outputs: images as |carve - nnU-Net| relative to the range of the
normalised input, and their correlation; labels as the fraction of voxels with the same label and Dice per label.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
from machine import cpu_model

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "resampling.md"
NNUNET_PYTHON = BENCH / ".venv-nnunet" / "bin" / "python"
ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD and carve's ANISOTROPY_RATIO


@dataclasses.dataclass
class Case:
    name: str
    description: str
    image: np.ndarray  # (z, y, x) float32
    image_geometry: object  # carve.imaging.io.Geometry
    labels: np.ndarray  # (z, y, x) uint8, values 0..n_classes-1
    label_geometry: object
    n_classes: int
    normalisation: dict
    target_spacing_mm: tuple[float, float, float]
    plan_spacing_mm: tuple[float, float, float]  # what carve's plan picks for the case's dataset


# ---- cases ---------------------------------------------------------------------------------------------
def shared_data() -> Path:
    return Path(os.environ.get("CARVE_SHARED_DATA", BENCH.parent.parent / "shared" / "data")).resolve()


def _read(path: Path):
    from carve.imaging.io import read_image

    if not path.exists():
        raise SystemExit(f"{path} is missing: set CARVE_SHARED_DATA to the shared data folder")
    return read_image(path)


def _spacing(path: Path) -> tuple[float, ...]:
    return tuple(_read(path)[1].spacing_mm)


def brain_case(data: Path) -> Case:
    from carve.planning.plan import choose_target_spacing

    folder = data / "mr" / "pyradiomics"
    image, geometry = _read(folder / "brain1_image.nrrd")
    labels, label_geometry = _read(folder / "brain1_label.nrrd")
    plan = choose_target_spacing([_spacing(folder / f"brain{i}_image.nrrd") for i in (1, 2)])
    return Case(
        "brain MR",
        "pyradiomics brain1, glioblastoma MR with tumour mask, 6.5 mm slices to 1 mm isotropic",
        image.astype(np.float32),
        geometry,
        labels.astype(np.uint8),
        label_geometry,
        2,
        {"scheme": "zscore_per_image"},
        (1.0, 1.0, 1.0),
        plan,
    )


def ct_case(data: Path) -> Case:
    from carve.planning.plan import fingerprint, normalisation_for

    folder = data / "ct" / "totalsegmentator_example"
    image, geometry = _read(folder / "example_ct.nii.gz")
    raw, label_geometry = _read(folder / "example_seg.nii.gz")
    values = np.unique(raw)
    labels = np.searchsorted(values, raw).astype(np.uint8)  # 0..K-1 without gaps, as carve's plan requires
    fp = fingerprint([folder / "example_ct_sm.nii.gz"], [folder / "example_seg.nii.gz"])
    return Case(
        "CT",
        "TotalSegmentator example CT at 3 mm to 1.5 mm; 41 structures (model output) on its last 30 slices",
        image.astype(np.float32),
        geometry,
        labels,
        label_geometry,
        len(values),
        normalisation_for("CT", fp["foreground_intensity"][0]),
        (1.5, 1.5, 1.5),
        tuple(geometry.spacing_mm),
    )


def hippocampus_case(data: Path) -> Case:
    from carve.planning.plan import choose_target_spacing

    folder = data / "hippocampus10"
    image, geometry = _read(folder / "imagesTr" / "hippocampus_001.nii.gz")
    labels, label_geometry = _read(folder / "labelsTr" / "hippocampus_001.nii.gz")
    plan = choose_target_spacing([_spacing(p) for p in sorted((folder / "imagesTr").glob("*.nii.gz"))])
    return Case(
        "hippocampus",
        "hippocampus_001, T1 MR with anterior/posterior labels, 1 mm to 0.8 mm",
        image.astype(np.float32),
        geometry,
        labels.astype(np.uint8),
        label_geometry,
        3,
        {"scheme": "zscore_per_image"},
        (0.8, 0.8, 0.8),
        plan,
    )


CASES: dict[str, Callable[[Path], Case]] = {"brain": brain_case, "ct": ct_case, "hippocampus": hippocampus_case}


# ---- carve's side --------------------------------------------------------------------------------------
def plans_of(case: Case) -> dict:
    return {
        "normalisation": [case.normalisation],
        "target_spacing_mm": list(case.target_spacing_mm),
        "n_classes": case.n_classes,
    }


def carve_image(case: Case) -> np.ndarray:
    from carve.planning.preprocess import preprocess_image

    return preprocess_image(case.image, case.image_geometry, plans_of(case))[0][0]


def carve_labels(case: Case) -> np.ndarray:
    from carve.planning.preprocess import preprocess_labels

    return preprocess_labels(case.labels, case.label_geometry, plans_of(case))


def carve_export(scores: np.ndarray, shape: tuple[int, ...], spacing_mm) -> np.ndarray:
    """The label part of ``carve.prediction.uncertainty.maps_on_grid`` with ``carve.prediction.predict``'s resize
    (order 1)."""
    from carve.imaging.resample import resize_image

    best = labels = None
    for c in range(scores.shape[0]):
        pc = resize_image(scores[c], shape, spacing_mm, order=1)
        np.clip(pc, 0.0, 1.0, out=pc)
        if best is None:
            best, labels = pc, np.zeros(pc.shape, np.uint8)
        else:
            labels[pc > best] = c
            np.maximum(best, pc, out=best)
    return labels


# ---- nnU-Net's side: a worker process in nnU-Net's virtual environment ---------------------------------
def nnunet_worker() -> int:
    """Serve jobs (JSON lines on stdin) with nnU-Net's functions; reply with JSON lines on the real stdout."""
    reply, sys.stdout = sys.stdout, sys.stderr  # whatever nnU-Net prints goes to stderr
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
        ZScoreNormalization,
    )
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    packages = ("nnunetv2", "batchgenerators", "scikit-image", "scipy", "numpy")
    print(json.dumps({"versions": {p: version(p) for p in packages}}), file=reply, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        data = np.load(job["input"])
        kw = {
            "new_shape": job["new_shape"],
            "current_spacing": job["spacing"],
            "new_spacing": job["target"],
            "order_z": job.get("order_z", 0),
            "force_separate_z": None,
        }
        start = time.perf_counter()
        if job["kind"] == "image":
            scheme = job["normalisation"]
            if scheme["scheme"] == "ct":
                lo, hi = scheme["clip"]
                props = {"mean": scheme["mean"], "std": scheme["std"], "percentile_00_5": lo, "percentile_99_5": hi}
                normaliser = CTNormalization(use_mask_for_norm=False, intensityproperties=props)
            else:
                normaliser = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={})
            data = data[None]
            data[0] = normaliser.run(data[0])
            out = resample_data_or_seg_to_shape(data, is_seg=False, order=3, **kw)[0]
        elif job["kind"] == "labels":
            out = resample_data_or_seg_to_shape(data[None], is_seg=True, order=1, **kw)[0]
        else:  # export: class scores back to the case's grid, then the argmax
            out = resample_data_or_seg_to_shape(data, is_seg=False, order=1, **kw).argmax(0).astype(np.uint8)
        seconds = time.perf_counter() - start
        np.save(job["output"], out)
        print(json.dumps({"seconds": seconds}), file=reply, flush=True)
    return 0


class NnUNet:
    """The worker process, started once; ``run`` sends one job and returns (seconds, output)."""

    def __init__(self, python: Path, folder: Path):
        if not Path(python).exists():
            raise SystemExit(f"{python} not found: create nnU-Net's virtual environment (bench/.venv-nnunet)")
        self.folder = folder
        self.process = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--nnunet-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCH)},
        )
        self.versions = self._reply()["versions"]
        self.n = 0

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"nnU-Net's worker stopped (exit status {self.process.wait()})")
        return json.loads(line)

    def save(self, array: np.ndarray, name: str) -> str:
        path = self.folder / f"{name}.npy"
        np.save(path, array)
        return str(path)

    def run(self, kind: str, input_path: str, new_shape, spacing, target, **extra) -> tuple[float, np.ndarray]:
        self.n += 1
        out = self.folder / f"out{self.n}.npy"
        job = {
            "kind": kind,
            "input": input_path,
            "output": str(out),
            "new_shape": [int(s) for s in new_shape],
            "spacing": [float(s) for s in spacing],
            "target": [float(s) for s in target],
            **extra,
        }
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        seconds = float(self._reply()["seconds"])
        result = np.load(out)
        out.unlink()
        return seconds, result

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---- measurement ---------------------------------------------------------------------------------------
def alternate(repeats: int, carve: Callable[[], np.ndarray], nnunet: Callable[[], tuple[float, np.ndarray]]):
    """Median seconds of each side (alternating which goes first) and each side's last output."""
    seconds: dict[str, list[float]] = {"carve": [], "nnU-Net": []}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for side in ("carve", "nnU-Net") if repeat % 2 == 0 else ("nnU-Net", "carve"):
            if side == "carve":
                start = time.perf_counter()
                outputs[side] = carve()
                seconds[side].append(time.perf_counter() - start)
            else:
                s, outputs[side] = nnunet()
                seconds[side].append(s)
    return {k: statistics.median(v) for k, v in seconds.items()}, outputs


def image_agreement(a: np.ndarray, b: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    d = np.abs(a.astype(np.float64) - b)
    clipped = np.abs(np.clip(a, lo, hi).astype(np.float64) - b)
    span = hi - lo
    return {
        "max": float(d.max() / span),
        "mean": float(d.mean() / span),
        "corr": float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
        "max_clipped": float(clipped.max() / span),
    }


def dice(a: np.ndarray, b: np.ndarray, n_classes: int) -> dict[int, float]:
    out = {}
    for v in range(1, n_classes):
        x, y = a == v, b == v
        denom = int(x.sum()) + int(y.sum())
        if denom:
            out[v] = 2 * float((x & y).sum()) / denom
    return out


def label_agreement(a: np.ndarray, b: np.ndarray, n_classes: int) -> dict:
    return {"same": float((a == b).mean()), "dice": dice(a, b, n_classes)}


def separate_z(case: Case) -> bool:
    """Whether nnU-Net's default resamples the through-plane axis on its own (order_z) for this case."""
    return any(max(s) / min(s) > ANISOTROPY for s in (case.image_geometry.spacing_mm, case.target_spacing_mm))


def measure(case: Case, nnunet: NnUNet, repeats: int, back: bool) -> dict:
    from carve.imaging.resample import target_shape
    from carve.planning.preprocess import normalise

    spacing, target = case.image_geometry.spacing_mm, case.target_spacing_mm
    shape = target_shape(case.image.shape, spacing, target)
    label_spacing = case.label_geometry.spacing_mm
    label_shape = target_shape(case.labels.shape, label_spacing, target)
    image_in = nnunet.save(case.image, "image")
    labels_in = nnunet.save(case.labels, "labels")
    result: dict = {"case": case, "shape": shape, "label_shape": label_shape}

    seconds, out = alternate(
        repeats,
        lambda: carve_image(case),
        lambda: nnunet.run("image", image_in, shape, spacing, target, normalisation=case.normalisation),
    )
    normalised = normalise(case.image, case.normalisation)
    lo, hi = float(normalised.min()), float(normalised.max())
    result["image"] = {"seconds": seconds, "agreement": image_agreement(out["carve"], out["nnU-Net"], lo, hi)}
    carve_img = out["carve"]

    seconds, out = alternate(
        repeats,
        lambda: carve_labels(case),
        lambda: nnunet.run("labels", labels_in, label_shape, label_spacing, target),
    )
    result["labels"] = {"seconds": seconds, "agreement": label_agreement(out["carve"], out["nnU-Net"], case.n_classes)}
    carve_lab = out["carve"]

    if separate_z(case):  # the same nnU-Net call with a linear through-plane axis (carve's choice), untimed
        _, img_z1 = nnunet.run("image", image_in, shape, spacing, target, normalisation=case.normalisation, order_z=1)
        _, lab_z1 = nnunet.run("labels", labels_in, label_shape, label_spacing, target, order_z=1)
        result["order_z1"] = {
            "image": image_agreement(carve_img, img_z1, lo, hi),
            "labels": label_agreement(carve_lab, lab_z1, case.n_classes),
        }

    if back:
        scores = (carve_lab[None] == np.arange(case.n_classes, dtype=np.uint8)[:, None, None, None]).astype(np.float32)
        scores_in = nnunet.save(scores, "scores")
        seconds, out = alternate(
            repeats,
            lambda: carve_export(scores, case.labels.shape, target),
            lambda: nnunet.run("export", scores_in, case.labels.shape, target, label_spacing),
        )
        del scores
        Path(scores_in).unlink()
        result["export"] = {
            "seconds": seconds,
            "agreement": label_agreement(out["carve"], out["nnU-Net"], case.n_classes),
            "round_trip": {side: dice(case.labels, lab, case.n_classes) for side, lab in out.items()},
        }
    return result


# ---- report --------------------------------------------------------------------------------------------
def machine_line(nnunet_versions: dict[str, str]) -> str:
    model = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    carve_side = ", ".join(f"{p} {version(p)}" for p in ("numpy", "scipy"))
    nnunet_side = ", ".join(f"{p} {v}" for p, v in nnunet_versions.items())
    return (
        f"{model}, {os.cpu_count()} cores ({usable} usable{load}), Python {platform.python_version()}; "
        f"carve: {carve_side}; nnU-Net's environment: {nnunet_side}"
    )


def _load_end() -> str:
    return f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""


def _grid(shape, spacing) -> str:
    return "x".join(str(int(n)) for n in shape) + " @ " + "x".join(f"{s:.3g}" for s in spacing) + " mm"


def _dice_text(d: dict[int, float], sizes: np.ndarray) -> str:
    """Dice per label; for many labels the mean and the worst, with its size in the case's own label map."""
    if not d:
        return "-"
    if len(d) <= 3:
        return ", ".join(f"{v:.3f}" for v in d.values())
    worst = min(d, key=d.get)
    n = int(sizes[worst])
    return f"mean {statistics.mean(d.values()):.3f}, min {d[worst]:.3f} (label {worst}: {n} voxel{'s' * (n != 1)})"


def _times(entry: dict | None) -> str:
    if entry is None:
        return "- | - | -"
    s = entry["seconds"]
    return f"{s['carve']:.3g} | {s['nnU-Net']:.3g} | {s['nnU-Net'] / s['carve']:.2f}"


def render(results: list[dict], repeats: int, back: bool, total_s: float, versions: dict[str, str]) -> str:
    timing, image_rows, label_rows = [], [], []
    for r in results:
        case = r["case"]
        timing.append(
            f"| {case.name} | {_grid(case.image.shape, case.image_geometry.spacing_mm)} | "
            f"{_grid(r['shape'], case.target_spacing_mm)} | {'x'.join(f'{s:.3g}' for s in case.plan_spacing_mm)} | "
            f"{_times(r['image'])} | {_times(r['labels'])} | {_times(r.get('export'))} |"
        )
        a = r["image"]["agreement"]
        z1 = r.get("order_z1")
        image_rows.append(
            f"| {case.name} | {a['max']:.2e} | {a['mean']:.2e} | {a['corr']:.6f} | {a['max_clipped']:.2e} | "
            + (f"{z1['image']['mean']:.2e} ({z1['image']['max_clipped']:.2e}) |" if z1 else "- |")
        )
        lab = r["labels"]["agreement"]
        exp = r.get("export")
        sizes = np.bincount(case.labels.ravel(), minlength=case.n_classes)
        label_rows.append(
            f"| {case.name} | {_grid(case.labels.shape, case.label_geometry.spacing_mm)} | {case.n_classes - 1} | "
            f"{lab['same']:.5f} | {_dice_text(lab['dice'], sizes)} | "
            + (f"{_dice_text(z1['labels']['dice'], sizes)} | " if z1 else "- | ")
            + (
                f"{exp['agreement']['same']:.5f} | {_dice_text(exp['round_trip']['carve'], sizes)} | "
                f"{_dice_text(exp['round_trip']['nnU-Net'], sizes)} |"
                if exp
                else "- | - | - |"
            )
        )
    back_flag = "" if back else " --no-back"
    lines = [
        "# Resampling and preprocessing: carve against nnU-Net's default resampling",
        "",
        f"Machine: {machine_line(versions)}.",
        "",
        f"`python bench/bench_resampling.py --repeats {repeats}{back_flag}`; one thread per side; median seconds of "
        f"{repeats} alternating repeats, timed around each call only (nnU-Net in its own environment and process); "
        f"whole run {total_s:.0f} s{_load_end()}. Image: normalisation and resampling to the target spacing (carve "
        "`preprocess_image`; nnU-Net's normaliser and `resample_data_or_seg_to_shape`, order 3, `order_z=0`). "
        "Labels: the label map to the same spacing (carve `preprocess_labels`; nnU-Net `is_seg=True`, order 1). "
        "Export: one-hot class scores back to the case's grid and argmax (carve `resize_image(order=1)` per class; "
        "nnU-Net's probability export, order 1, `order_z=0`). Ratio: nnU-Net seconds / carve seconds.",
        "",
        "| case | grid | target grid | plan's own spacing | image carve s | image nnU-Net s | ratio "
        "| labels carve s | labels nnU-Net s | ratio | export carve s | export nnU-Net s | ratio |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *timing,
        "",
        "Image agreement on the target grid, |carve - nnU-Net| relative to the range of the normalised input. "
        "nnU-Net's resize clips its output to the input's range (scikit-image's `clip=True`), carve keeps the "
        "spline's overshoot: the next column clips carve's output the same way. Where nnU-Net resamples the "
        "through-plane axis on its own (spacing more than 3x anisotropic) it does so by nearest neighbour "
        "(`order_z=0`) and carve linearly; the last column reruns nnU-Net with `order_z=1` (untimed); what is left "
        "then comes from nnU-Net resizing slice by slice, each clipped to its own slice's range.",
        "",
        "| case | max abs diff / range | mean abs diff / range | correlation | max after clipping carve "
        "| nnU-Net order_z=1: mean (max after clipping) |",
        "|---|---:|---:|---:|---:|---:|",
        *image_rows,
        "",
        "Label agreement: fraction of voxels with the same label and Dice per foreground label between the two "
        "tools' maps (forward, to the target grid); with nnU-Net at `order_z=1` where that applies; export: "
        "fraction of equal voxels between the tools, and each tool's round trip (its export of the one-hot of "
        "carve's forward map against the original labels), Dice per label; where many labels, the mean and the "
        "worst label with its size in the case's label map. For labels nnU-Net's separate-z step thresholds each "
        "label's linear through-plane interpolation at 0.5, which on a 0/1 mask picks the nearer slice, so "
        "`order_z=1` gives the same map as `order_z=0`; what differs from carve is that nnU-Net takes the in-plane "
        "argmax slice by slice before that step, where carve interpolates the one-hot in 3D at once (carve has no "
        "separate axis for labels).",
        "",
        "| case | label grid | labels | same label | Dice per label | Dice, nnU-Net order_z=1 | export same label "
        "| round trip Dice carve | round trip Dice nnU-Net |",
        "|---|---|---:|---:|---|---|---:|---|---|",
        *label_rows,
        "",
        "Cases: " + "; ".join(f"{r['case'].name}: {r['case'].description}" for r in results) + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per side, case and direction")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-back", dest="back", action="store_false", help="skip the export direction")
    parser.add_argument("--nnunet-python", type=Path, default=NNUNET_PYTHON, help="python of nnU-Net's venv")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    parser.add_argument("--nnunet-worker", action="store_true", help=argparse.SUPPRESS)
    if argv is None and __name__ != "__main__":  # called by run_all.py: defaults, not run_all's arguments
        argv = []
    args = parser.parse_args(argv)
    if args.nnunet_worker:
        return nnunet_worker()
    data = shared_data()
    missing = [str(p) for p in (args.nnunet_python, data) if not p.exists()]
    if missing:  # keep the last result, and let run_all.py go on with the other benchmarks
        print(f"bench_resampling: not run, missing {', '.join(missing)} (nnU-Net's venv, CARVE_SHARED_DATA)")
        return 1
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="carve-bench-resampling-") as tmp:
        nnunet = NnUNet(args.nnunet_python, Path(tmp))
        try:
            for name in args.cases:
                result = measure(CASES[name](data), nnunet, args.repeats, args.back)
                results.append(result)
                done = {k: result[k]["seconds"] for k in ("image", "labels", "export") if k in result}
                progress = ", ".join(f"{k} {s['carve']:.3g} s / {s['nnU-Net']:.3g} s" for k, s in done.items())
                print(f"{name} (carve / nnU-Net): {progress}", file=sys.stderr, flush=True)
        finally:
            nnunet.close()
    text = render(results, args.repeats, args.back, time.perf_counter() - start, nnunet.versions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
