"""Cost of carve's deterministic CUDA switch (``train.deterministic``): iterations per second with and without,
and whether two deterministic runs give identical weights. Needs a CUDA GPU; on a machine without one it says so.

    python bench/bench_cuda_determinism.py            # writes bench/results/cuda_determinism.md
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from carve.training.augment import AugmentConfig  # noqa: E402
from carve.training.network import NetworkConfig, load_model  # noqa: E402
from carve.training.train import TrainConfig, train_fold  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "cuda_determinism.md"


def _cases(n: int = 4, shape=(48, 96, 96)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(n):
        grid = np.indices(shape).astype(np.float32)
        centre = np.asarray(shape) / 2 + rng.uniform(-5, 5, 3)
        label = (np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))) < 15).astype(np.uint8)
        image = (label + rng.normal(0, 0.5, shape)).astype(np.float32)[None]
        cases.append((image, label))
    return cases


def _run(config: TrainConfig, cases, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    model = train_fold(cases, [], config, out, device="cuda", threads=4)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return config.epochs * config.iterations_per_epoch / seconds, load_model(model)[0].state_dict()


def main() -> str:
    if not torch.cuda.is_available():
        text = f"# CUDA determinism\n\nNot measured: no CUDA device on {platform.node()} ({platform.processor()}).\n"
        print(text)
        return text
    network = NetworkConfig(in_channels=1, n_classes=2, base_channels=32, max_channels=320)
    base = TrainConfig(
        epochs=4, time_budget_min=None, iterations_per_epoch=50, batch_size=2, patch_size=(64, 128, 128),
        augment=AugmentConfig(), network=network, checkpoint_every_min=1e9,
    )  # fmt: skip
    cases = _cases()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _run(replace(base, epochs=1), cases, Path(tmp) / "warmup")
        for repeat in range(2):  # alternate the two settings
            for deterministic in (True, False):
                its, weights = _run(
                    replace(base, deterministic=deterministic), cases, Path(tmp) / f"{deterministic}{repeat}"
                )
                rows.append((deterministic, repeat, its, weights))
    det = [r for r in rows if r[0]]
    fast = [r for r in rows if not r[0]]
    same = all(torch.equal(det[0][3][k], det[1][3][k]) for k in det[0][3])
    same_fast = all(torch.equal(fast[0][3][k], fast[1][3][k]) for k in fast[0][3])
    its_det, its_fast = np.mean([r[2] for r in det]), np.mean([r[2] for r in fast])
    text = (
        "# CUDA determinism\n\n"
        f"Machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}.\n"
        f"Network 32-320 channels, patch 64x128x128, batch 2, {base.epochs * base.iterations_per_epoch} iterations.\n\n"
        "| setting | iterations/s | two runs identical |\n|---|---|---|\n"
        f"| deterministic (default) | {its_det:.2f} | {same} |\n"
        f"| fast (cuDNN autotune) | {its_fast:.2f} | {same_fast} |\n\n"
        f"Cost of determinism: {its_fast / its_det:.2f}x the time per iteration.\n"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
