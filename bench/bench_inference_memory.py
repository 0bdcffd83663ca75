"""Benchmark: peak memory of predicting a 512 x 512 x 300 CT with a tiny network, in bytes per voxel.

    python bench/bench_inference_memory.py [--shape 300 512 512] [--out bench/results/inference_memory.md]

A synthetic CT (int16 HU: a body, an organ, a vessel, noise) is written as NIfTI; then each configuration runs
:func:`carve.prediction.predict.predict_case` in a fresh process (two folds of a tiny network, one pointwise convolution
(:class:`PointwiseNet`), no mirroring) and reports the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) against the resident size just before the call (imports).
``bytes/voxel`` divides the difference by the voxels of the case's grid. Configurations:

* ``float32``: the plan's grid is the case's grid (the most memory: every buffer is full size);
* ``float16``: the same with ``half_precision`` (float16 accumulators and plan-grid results);
* ``coarser plan``: the case at 0.7 x 0.7 x 1 mm, the plan at 1.5 mm isotropic (a typical CT plan): the
  ensemble runs on a grid 4.7 times smaller, the maps come back to the full grid one class at a time.

Every output is written as in the pipeline (compressed NIfTI), so the times include writing them. The markdown
table goes to ``--out`` and to stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from machine import cpu_model

OUT = Path(__file__).resolve().parent / "results" / "inference_memory.md"
N_CLASSES = 3
CONFIGURATIONS = {
    "float32": {"case_spacing_mm": (1.0, 0.7, 0.7), "plan_spacing_mm": (1.0, 0.7, 0.7), "half_precision": False},
    "float16": {"case_spacing_mm": (1.0, 0.7, 0.7), "plan_spacing_mm": (1.0, 0.7, 0.7), "half_precision": True},
    "coarser plan": {"case_spacing_mm": (1.0, 0.7, 0.7), "plan_spacing_mm": (1.5, 1.5, 1.5), "half_precision": False},
}


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """int16 HU: air, an elliptic body of soft tissue, a brighter organ and a thin bright vessel, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    image = np.full(shape, -1000, dtype=np.int16)
    image[np.broadcast_to((yy / 0.8) ** 2 + (xx / 0.9) ** 2 <= 1.0, shape)] = 40
    image[((zz / 0.6) ** 2 + ((yy + 0.2) / 0.35) ** 2 + ((xx - 0.3) / 0.3) ** 2) <= 1.0] = 90
    image[np.broadcast_to((yy - 0.1) ** 2 + (xx + 0.2) ** 2 <= 0.03**2, shape)] = 300
    image += rng.integers(-20, 21, size=shape, dtype=np.int16)
    return image


class PointwiseNet:
    """The tiny network: one pointwise convolution from the image to the class logits (a ``torch.nn.Conv3d``),
    built in the prediction process in place of :func:`carve.training.network.load_model`'s U-Net, whose cost on a CPU
    would hide what is measured here (the ensemble's buffers, resampling, maps and writing)."""

    @staticmethod
    def load(path: str | Path, device: str = "cpu"):
        import torch

        torch.manual_seed(int(Path(path).stem.rsplit("_", 1)[-1]))
        model = torch.nn.Conv3d(1, N_CLASSES, kernel_size=1)
        with torch.no_grad():
            model.weight.mul_(4.0)
        return model.to(device).eval(), {}


def plans_for(spacing_mm: tuple[float, float, float]) -> dict:
    return {
        "normalisation": [{"scheme": "ct", "clip": [-200.0, 400.0], "mean": 50.0, "std": 60.0}],
        "target_spacing_mm": list(spacing_mm),
        "patch_size": [64, 160, 160],
        "n_classes": N_CLASSES,
        "labels": {"1": "organ", "2": "vessel"},
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(image_path: str, models: list[str], name: str, folder: str, threads: int, queue) -> None:
    """Child process: one prediction; puts (RSS before, peak RSS, seconds) on ``queue``."""
    import SimpleITK  # noqa: F401  (everything predict_case imports, loaded before the baseline)
    import torch

    import carve.prediction.inference  # noqa: F401
    import carve.prediction.postprocess  # noqa: F401
    import carve.prediction.projection  # noqa: F401
    import carve.prediction.uncertainty  # noqa: F401
    import carve.training.network
    from carve.prediction.predict import PredictOptions, predict_case

    torch.set_num_threads(threads)
    carve.training.network.load_model = PointwiseNet.load  # predict_case imports it at call time
    config = CONFIGURATIONS[name]
    options = PredictOptions(overlap=0.0, mirror_axes=(), batch_windows=1, half_precision=config["half_precision"])
    out = Path(folder)
    before = _rss_bytes()
    start = time.perf_counter()
    predict_case("bench", Path(image_path), [Path(m) for m in models], plans_for(config["plan_spacing_mm"]),
                 out / "labels.nii.gz", out / "entropy.nii.gz", out / "scores.tsv", options, "cpu", threads,
                 out_maps=out / "maps")  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    queue.put((before, peak, seconds))


def measure(image_path: Path, models: list[Path], name: str, folder: Path, threads: int) -> tuple[int, int, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (str(image_path), [str(m) for m in models], name, str(folder), threads, queue)
    process = context.Process(target=_measure, args=args)
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"configuration {name}: the prediction process failed ({process.exitcode})")
    return result


def machine_line() -> str:
    model = cpu_model()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    packages = ", ".join(f"{p} {version(p)}" for p in ("numpy", "scipy", "torch", "SimpleITK"))
    return (
        f"{model}, {os.cpu_count()} cores ({usable} usable), {memory:.0f} GiB RAM, "
        f"Python {platform.python_version()}; {packages}"
    )


def table(shape: tuple[int, int, int], rows: list[tuple[str, tuple[int, ...], int, int, float]], threads: int) -> str:
    voxels = int(np.prod(shape))
    lines = [
        "# Inference memory",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Case: {shape[2]} x {shape[1]} x {shape[0]} voxels ({voxels / 1e6:.1f} M), int16 CT; {N_CLASSES} classes; "
        f"two folds of a pointwise-convolution network, no mirroring, patch 64 x 160 x 160, {threads} thread(s); "
        "every output written as compressed NIfTI. Peak RSS of the prediction process (`ru_maxrss`); `added` is "
        "the peak minus the resident size before the call (imports: the same in every row); bytes/voxel divides "
        "`added` by the case's voxels. Produced by `python bench/bench_inference_memory.py`.",
        "",
        "| configuration | plan grid (voxels) | peak RSS (MiB) | added (MiB) | bytes/voxel | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, plan_shape, before, peak, seconds in rows:
        added = peak - before
        lines.append(
            f"| {name} | {' x '.join(map(str, plan_shape[::-1]))} ({np.prod(plan_shape) / 1e6:.1f} M) | "
            f"{peak / 2**20:.0f} | {added / 2**20:.0f} | {added / voxels:.1f} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from carve.imaging.io import Geometry, write_image
    from carve.imaging.resample import target_shape

    shape = tuple(args.shape)
    rows = []
    with tempfile.TemporaryDirectory(prefix="carve_bench_") as scratch:
        folder = Path(scratch)
        models = [folder / f"fold_{k}.pt" for k in range(2)]  # names only: PointwiseNet.load builds them
        for name in args.configurations:
            config = CONFIGURATIONS[name]
            image_path = folder / "ct.nii.gz"
            write_image(image_path, synthetic_ct(shape), Geometry(config["case_spacing_mm"]))
            before, peak, seconds = measure(image_path, models, name, folder / name, args.threads)
            plan_shape = target_shape(shape, config["case_spacing_mm"], config["plan_spacing_mm"])
            rows.append((name, plan_shape, before, peak, seconds))
            print(f"{name}: peak {peak / 2**20:.0f} MiB, added {(peak - before) / 2**20:.0f} MiB, {seconds:.0f} s")
    text = table(shape, rows, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
