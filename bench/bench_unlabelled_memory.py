"""Benchmark: memory of a training job's unlabelled-image sampler, read into memory against memory-mapped.

    python bench/bench_unlabelled_memory.py [--images 40] [--shape 128 160 160] [--out FILE.md]

A semi-supervised training job (issue #19) samples patches from every unlabelled image. ``--images`` synthetic
preprocessed images (float32, one channel, ``--shape``) are stored with :func:`carve.planning.preprocess.save_case`
(as rule ``preprocess_unlabelled`` stores them); then each configuration, in a fresh process, opens them all, builds
the job's :class:`carve.training.sampling.PatchSampler` (uniform patches, no labels) and draws 50 batches of two
patches 48 x 64 x 64. Configurations:

* ``read``: ``np.load`` of each image (carve before this benchmark: every image in the job's own memory);
* ``memory-mapped``: :func:`carve.planning.preprocess.map_case_image` (carve now);
* ``nnU-Net style``: each image unpacked to its own ``.npy`` and opened with ``np.load(mmap_mode="r")``, as
  nnU-Net's data loader opens its unpacked cases (the reference a user would know).

Reported: the process's anonymous resident memory after sampling (``RssAnon`` in ``/proc/self/status``: memory the
kernel cannot drop) and its peak resident set (``ru_maxrss``, which counts mapped file pages too, which the kernel
can drop under pressure), both minus the values before opening the images; and the seconds per batch.
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

OUT = Path(__file__).resolve().parent / "results" / "unlabelled_memory.md"
PATCH = (48, 64, 64)
BATCHES = 50


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, paths: list[str], queue) -> None:
    from carve.planning.preprocess import map_case_image
    from carve.training.sampling import PatchSampler

    anon0, peak0 = rss_anon_mib(), peak_mib()
    if mode == "read":
        images = []
        for p in paths:
            with np.load(p, allow_pickle=False) as data:
                images.append(data["image"])
    elif mode == "memory-mapped":
        images = [map_case_image(Path(p)) for p in paths]
    else:
        images = [np.load(Path(p).with_suffix(".npy"), mmap_mode="r") for p in paths]
    zero = np.zeros((), np.uint8)
    sampler = PatchSampler(
        [(img, np.broadcast_to(zero, img.shape[1:])) for img in images], PATCH, 2, 0.0, np.random.default_rng(0)
    )
    t0 = time.perf_counter()
    checksum = 0.0
    for _ in range(BATCHES):
        batch, _ = sampler.sample(2)
        checksum += float(batch.sum(dtype=np.float64))
    seconds = (time.perf_counter() - t0) / BATCHES
    queue.put({"anon": rss_anon_mib() - anon0, "peak": peak_mib() - peak0, "s": seconds, "checksum": checksum})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 160, 160))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from carve.imaging.io import Geometry
    from carve.planning.preprocess import save_case

    shape = tuple(args.shape)
    stored_mib = args.images * np.prod(shape) * 4 / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
        for i in range(args.images):
            image = np.random.default_rng(i).standard_normal((1, *shape), dtype=np.float32)
            path = Path(tmp) / f"unlabelled_{i:03d}.npz"
            save_case(path, image, geometry)
            np.save(path.with_suffix(".npy"), image)
            paths.append(str(path))
        ctx = multiprocessing.get_context("spawn")
        results = {}
        for mode in ("read", "memory-mapped", "nnU-Net style"):
            queue = ctx.Queue()
            proc = ctx.Process(target=measure, args=(mode, paths, queue))
            proc.start()
            results[mode] = queue.get()
            proc.join()
            if proc.exitcode:
                raise SystemExit(f"{mode}: the measuring process exited with {proc.exitcode}")
    checks = {round(r["checksum"], 3) for r in results.values()}
    if len(checks) != 1:
        raise SystemExit(f"the configurations drew different patches: {results}")
    for mode, r in results.items():
        rows.append(
            f"| {mode} | {r['anon']:.0f} | {r['anon'] / stored_mib:.2f} | {r['peak']:.0f} | {1000 * r['s']:.1f} |"
        )
    ratio = results["read"]["anon"] / max(results["memory-mapped"]["anon"], 1.0)
    text = "\n".join(
        [
            "# Unlabelled-image sampler memory",
            "",
            f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"numpy {version('numpy')}.",
            "",
            f"{args.images} preprocessed images of 1 x {' x '.join(map(str, shape))} float32 ({stored_mib:.0f} MiB "
            f"stored); the job's sampler opens them all and draws {BATCHES} batches of two patches "
            f"{' x '.join(map(str, PATCH))}, each configuration in a fresh process (the same patches in every row). "
            "`anonymous` is RssAnon after sampling (memory the kernel cannot drop), `peak` is ru_maxrss (mapped "
            "file pages included, which the kernel can drop), both minus the values before opening the images. "
            "Produced by `python bench/bench_unlabelled_memory.py`.",
            "",
            "| configuration | anonymous (MiB) | anonymous / stored | peak (MiB) | ms per batch |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Read into memory against memory-mapped: {ratio:.0f}x the anonymous memory.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
