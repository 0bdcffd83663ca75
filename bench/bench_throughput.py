"""Benchmark: carve's training throughput, and where an iteration's time goes (data against model).

    CARVE_SHARED_DATA=../shared/data python bench/bench_throughput.py [--device cpu|cuda] [--threads 2]
        [--iterations 30] [--warmup 5] [--synthetic] [--out bench/results/throughput.md]

``--out`` keeps one section per device kind: a CUDA run replaces the CUDA section and leaves the CPU one.

The recipe is carve's default CPU recipe: ``carve.training.train.TrainConfig`` defaults (batch 4, patch 32x48x32, AdamW,
deep supervision, the default augmentation) with the 4-stage 16-128 channel U-Net that
``carve.training.network.plan_topology`` gives that patch at 1 mm, on the 10 hippocampus10 cases preprocessed as carve's
pipeline does (``carve.planning.preprocess.preprocess_image``: per-image z-score, already at the plan's 1 mm), or with
``--synthetic`` (or when the data are missing) 10 cases of the same size from ``carve.pipeline.synth.synthesize_case``.

``carve.training.train.train_fold`` runs its loop in one piece (schedule, validation, checkpoints), so this script
replicates
the loop's setup and its training step faithfully, calling the same carve functions in the same order with the
same arguments: ``configure_determinism``, ``UNet3D``, ``_build_optimizer``, ``spatial_margin``, ``PatchSampler``
with the enlarged crop and its seeded generator, then per iteration the learning-rate factor (``lr_factor``,
outside the phases: microseconds), ``PatchSampler.sample``, ``augment_batch`` on the device, the forward pass
under the same autocast (bfloat16 on CUDA, off on CPU), ``deep_supervision_loss`` and its finiteness check,
``zero_grad`` and ``backward``, ``clip_grad_norm_(12)``, ``optimizer.step`` and ``float(loss)``. Phases are timed with
``time.perf_counter`` (on CUDA after ``torch.cuda.synchronize()``):

* sampling: ``PatchSampler.sample`` (random crops with foreground oversampling, numpy);
* augmentation: to tensors on the device and ``augment_batch`` (spatial and intensity, torch);
* forward, loss (deep supervision loss and finiteness check), backward (``zero_grad`` and ``backward``),
  optimizer (gradient clipping, ``step``, reading the loss).

A free-running pass (no synchronisation between phases) of the same length gives the iterations per second; the
phase-timed pass follows it. FLOPs per iteration are 3x ``carve.training.network.forward_flops`` x batch (forward plus
backward); the ceiling is measured in the same run by a Conv3d 3x3x3 (64 channels on 32^3) forward plus backward
probe under the same threads and precision.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model

from carve.training.augment import augment_batch, spatial_margin
from carve.training.network import NetworkConfig, UNet3D, forward_flops, plan_topology
from carve.training.sampling import PatchSampler
from carve.training.train import TrainConfig, _build_optimizer, configure_determinism, deep_supervision_loss, lr_factor

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "throughput.md"
TITLE = "# Training throughput: iterations per second and where the time goes"
PHASES = ("sampling", "augmentation", "forward", "loss", "backward", "optimizer")
DATA_PHASES, MODEL_PHASES = PHASES[:2], PHASES[2:]
SPACING_MM = (1.0, 1.0, 1.0)


# ---- data ----------------------------------------------------------------------------------------------
def hippocampus_cases(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 10 hippocampus10 cases as carve's preprocessing leaves them (z-scored, (1, z, y, x); labels uint8)."""
    from carve.imaging.io import read_channels, read_image
    from carve.planning.preprocess import preprocess_image

    plans = {"normalisation": [{"scheme": "zscore_per_image"}], "target_spacing_mm": list(SPACING_MM)}
    cases = []
    for path in sorted((folder / "imagesTr").glob("*.nii.gz")):
        image, geometry = read_channels(path)
        label, _ = read_image(folder / "labelsTr" / path.name)
        cases.append((preprocess_image(image, geometry, plans)[0], label.astype(np.uint8)))
    return cases


def synthetic_cases(n: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hippocampus-sized cases (36x50x36 at 1 mm, labels 0-2) from carve's synthetic demo generator."""
    from carve.pipeline.synth import synthesize_case
    from carve.planning.preprocess import normalise

    cases = []
    for seed in range(n):
        image, label, _ = synthesize_case(seed, shape=(36, 50, 36), spacing_mm=SPACING_MM)
        cases.append((normalise(image, {"scheme": "zscore_per_image"})[None], label.astype(np.uint8)))
    return cases


def load_cases(synthetic: bool) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    folder = Path(os.environ.get("CARVE_SHARED_DATA", BENCH.parent.parent / "shared" / "data")) / "hippocampus10"
    if not synthetic and (folder / "imagesTr").is_dir():
        cases = hippocampus_cases(folder)
        return cases, f"hippocampus10 ({len(cases)} cases, {_shape_range(cases)} at 1 mm)"
    cases = synthetic_cases()
    return cases, f"synthetic ({len(cases)} cases of {_shape_range(cases)} at 1 mm, carve.pipeline.synth)"


def _shape_range(cases) -> str:
    shapes = np.asarray([lab.shape for _, lab in cases])
    lo, hi = shapes.min(0), shapes.max(0)
    return "x".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(lo, hi, strict=True))


# ---- the training step, phase by phase -----------------------------------------------------------------
def default_config() -> TrainConfig:
    """TrainConfig defaults with the U-Net carve plans for that patch at 1 mm (hippocampus: 3 classes)."""
    patch = TrainConfig.patch_size
    strides, kernels = plan_topology(patch, SPACING_MM, max_stages=4)
    network = NetworkConfig(in_channels=1, n_classes=3, strides=tuple(strides), kernel_sizes=tuple(kernels))
    return TrainConfig(network=network)


class Trainer:
    """train_fold's setup and inner step, with a clock around each phase."""

    def __init__(self, cases, config: TrainConfig, device: str, threads: int):
        torch.set_num_threads(threads)
        configure_determinism(device, config.deterministic)
        self.config, self.device = config, device
        self.net_cfg = replace(config.network, deep_supervision=config.deep_supervision)
        torch.manual_seed(config.seed)
        self.model = UNet3D(self.net_cfg).to(device)
        self.optimizer = _build_optimizer(self.model, config, logging.getLogger("bench.throughput"))
        margin = spatial_margin(config.augment, config.patch_size, config.spacing_mm)
        self.crop_size = tuple(p + 2 * m for p, m in zip(config.patch_size, margin, strict=True))
        rng = np.random.default_rng([config.seed, 1])
        self.sampler = PatchSampler(cases, self.crop_size, self.net_cfg.n_classes, config.foreground_fraction, rng)
        self.aug_gen = torch.Generator().manual_seed(config.seed + 2)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))
        self.cuda = str(device).startswith("cuda")
        self.iteration, self.skipped = 0, 0
        self.model.train()

    def _sync(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def step(self, progress: float, timed: bool) -> dict[str, float]:
        """One iteration of train_fold's loop; per-phase seconds when ``timed`` (else only the total)."""
        config, clock = self.config, (self._sync if timed else time.perf_counter)
        factor = lr_factor(progress, config.schedule, config.warmup_fraction)  # first, as in train_fold
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        t = [self._sync()]
        images, labels = self.sampler.sample(config.batch_size)
        t.append(clock())
        x, y = augment_batch(
            torch.from_numpy(images).to(self.device),
            torch.from_numpy(labels).to(self.device),
            config.augment,
            config.patch_size,
            config.spacing_mm,
            self.aug_gen,
        )
        t.append(clock())
        with self.autocast:
            out = self.model(x)
        t.append(clock())
        outputs = out if isinstance(out, list) else [out]
        loss = deep_supervision_loss(outputs, y, self.net_cfg.n_classes, self.net_cfg.strides)
        finite = bool(torch.isfinite(loss))
        t.append(clock())
        if finite:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        t.append(clock())
        if finite:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
            self.optimizer.step()
            float(loss.detach())
        else:
            self.skipped += 1
        t.append(self._sync())
        self.iteration += 1
        return dict(zip(PHASES, np.diff(t).tolist(), strict=True)) if timed else {"total": t[-1] - t[0]}


def ceiling_gflops(device: str, repeats: int = 5) -> float:
    """GFLOP/s of a Conv3d 3x3x3, 64 channels on 32^3, forward plus backward (3x the forward's FLOPs)."""
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device)
    x = torch.randn(1, 64, 32, 32, 32, device=device, requires_grad=True)
    flops = 3 * 2 * 27 * 64 * 64 * 32**3
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))
    cuda = str(device).startswith("cuda")
    times = []
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            y = conv(x)
        y.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up runs
            times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


# ---- report --------------------------------------------------------------------------------------------
def machine_line(device: str, threads: int) -> str:
    model = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if str(device).startswith("cuda") else ""
    packages = ", ".join(f"{p} {version(p)}" for p in ("numpy", "torch"))
    return (
        f"{model}, {os.cpu_count()} cores ({usable} usable{load}){gpu}, Python {platform.python_version()}; "
        f"{packages}; torch threads {threads}"
    )


def render(args, data: str, config: TrainConfig, free, phases, ceiling: float, skipped: int, total_s: float) -> str:
    per_iter = {p: statistics.mean(ph[p] for ph in phases) for p in PHASES}
    medians = {p: statistics.median(ph[p] for ph in phases) for p in PHASES}
    timed_total = sum(per_iter.values())
    free_mean = statistics.mean(free)
    flops = 3 * forward_flops(config.network, config.patch_size) * config.batch_size
    model_s = sum(per_iter[p] for p in MODEL_PHASES)
    data_s = sum(per_iter[p] for p in DATA_PHASES)
    flags = f" --device {args.device} --threads {args.threads} --iterations {args.iterations} --warmup {args.warmup}"
    flags += " --synthetic" if args.synthetic else ""
    rows = [
        f"| {p} | {1e3 * per_iter[p]:.1f} | {1e3 * medians[p]:.1f} | {100 * per_iter[p] / timed_total:.1f}% |"
        for p in PHASES
    ]
    net = config.network
    lines = [
        f"### {'CUDA' if args.device.startswith('cuda') else 'CPU'}",
        "",
        f"Machine: {machine_line(args.device, args.threads)}.",
        "",
        f"`python bench/bench_throughput.py{flags}`; whole run {total_s:.0f} s{_load_end()}. Data: {data}. Recipe: "
        f"TrainConfig defaults, batch {config.batch_size}, patch {'x'.join(map(str, config.patch_size))} "
        f"(crops of {'x'.join(map(str, _crop(config)))} for the spatial augmentation), U-Net "
        f"{net.channels[0]}-{net.channels[-1]} channels in {net.n_stages} stages, deep supervision, AdamW; "
        f"{'bfloat16 autocast' if args.device.startswith('cuda') else 'float32'}. {args.warmup} warm-up iterations, "
        f"then {args.iterations} free-running and {args.iterations} phase-timed ones"
        + (f" ({skipped} skipped for a non-finite loss)" if skipped else "")
        + ".",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| iterations per second (free-running) | {1 / free_mean:.2f} |",
        f"| seconds per iteration (free-running, median) | {statistics.median(free):.3f} |",
        f"| iterations per second (phase-timed) | {1 / timed_total:.2f} |",
        f"| model share (forward, loss, backward, optimizer) | {100 * model_s / timed_total:.1f}% |",
        f"| data share (sampling, augmentation) | {100 * data_s / timed_total:.1f}% |",
        f"| GFLOP per iteration (3x forward x batch) | {flops / 1e9:.1f} |",
        f"| GFLOP/s over the whole iteration (free-running) | {flops / free_mean / 1e9:.1f} |",
        f"| GFLOP/s over forward and backward | {flops / (per_iter['forward'] + per_iter['backward']) / 1e9:.1f} |",
        f"| ceiling: Conv3d 3x3x3 64 ch on 32^3, forward plus backward, GFLOP/s | {ceiling:.1f} |",
        f"| whole iteration against the ceiling | {100 * flops / free_mean / 1e9 / ceiling:.0f}% |",
        "",
        "Time per phase (phase-timed pass" + (", synchronised after each phase" if args.device != "cpu" else "") + "):",
        "",
        "| phase | mean ms | median ms | share |",
        "|---|---:|---:|---:|",
        *rows,
        f"| iteration | {1e3 * timed_total:.1f} | | 100% |",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, device: str, section: str) -> None:
    """One file, one section per device kind (cpu, cuda): this run's replaces its own, the other one stays."""
    sections = {}
    if path.exists():
        parts = re.split(r"^<!-- device: (\w+) -->$", path.read_text(), flags=re.MULTILINE)
        sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}
    sections[device.split(":")[0]] = section.strip()
    order = sorted(sections, key=lambda k: (k != "cpu", k))
    body = "\n\n".join(f"<!-- device: {k} -->\n{sections[k]}" for k in order)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{TITLE}\n\n{body}\n")


def _load_end() -> str:
    return f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""


def _crop(config: TrainConfig) -> tuple[int, ...]:
    margin = spatial_margin(config.augment, config.patch_size, config.spacing_mm)
    return tuple(p + 2 * m for p, m in zip(config.patch_size, margin, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--iterations", type=int, default=30, help="measured iterations per pass")
    parser.add_argument("--warmup", type=int, default=5, help="iterations before measuring")
    parser.add_argument("--synthetic", action="store_true", help="synthetic cases instead of hippocampus10")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file (this device's section is replaced)")
    if argv is None and __name__ != "__main__":  # called by run_all.py: defaults, not run_all's arguments
        argv = []
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    start = time.perf_counter()
    cases, data = load_cases(args.synthetic)
    config = default_config()
    trainer = Trainer(cases, config, args.device, args.threads)
    total = args.warmup + 2 * args.iterations
    for _ in range(args.warmup):
        trainer.step(trainer.iteration / total, timed=False)
    free = [trainer.step(trainer.iteration / total, timed=False)["total"] for _ in range(args.iterations)]
    phases = [trainer.step(trainer.iteration / total, timed=True) for _ in range(args.iterations)]
    ceiling = ceiling_gflops(args.device)
    text = render(args, data, config, free, phases, ceiling, trainer.skipped, time.perf_counter() - start)
    write_section(args.out, args.device, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
