"""Benchmark: carve's training throughput in fp32 and bf16 (and channels-last), and where an iteration's time goes.

    CARVE_SHARED_DATA=../shared/data python bench/bench_throughput.py [--device cpu|cuda] [--threads 2]
        [--iterations 30] [--warmup 5] [--variants fp32,fp32-cl,bf16,bf16-cl] [--synthetic]
        [--out bench/results/throughput.md]

``--out`` keeps one section per device kind: a CUDA run replaces the CUDA section and leaves the CPU one.

The recipe is what carve's pipeline trains on these cases: the plan of ``carve.planning.plan`` (``fingerprint`` and
``make_plans`` with the default ``PlanOptions``, MR) turned into the fold's ``TrainConfig`` by
``carve.training.fold.train_config_from`` with no ``train`` keys (the defaults: batch, patch and U-Net as planned,
AdamW, deep supervision, the default augmentation), on the 10 hippocampus10 cases preprocessed as the pipeline does
(``carve.planning.preprocess.preprocess_image`` with the plan), or with ``--synthetic`` (or when the data are
missing) 10 hippocampus-sized cases from ``carve.pipeline.synth.synthesize_case``.

Variants (``--variants``; those the device cannot run in bf16 are left out and said so): ``fp32``; ``bf16``
(``carve.training.precision.autocast``, as ``train_fold`` runs ``train.precision: bf16``); ``-cl``: the model and
each batch in ``torch.channels_last_3d`` memory format. Each variant starts from the same seed.

``carve.training.train.train_fold`` runs its loop in one piece (schedule, validation, checkpoints), so this script
replicates the loop's setup and its training step faithfully, calling the same carve functions in the same order
with the same arguments: ``configure_determinism``, ``UNet3D``, ``_build_optimizer``, ``spatial_margin``,
``PatchSampler`` with the enlarged crop and its seeded generator, then per iteration the learning-rate factor
(``lr_factor``, outside the phases: microseconds), ``PatchSampler.sample``, ``augment_batch`` on the device, the
forward pass under the variant's autocast, ``deep_supervision_loss`` and its finiteness check, ``zero_grad`` and
``backward``, ``clip_grad_norm_(12)``, ``optimizer.step`` and ``float(loss)``. Phases are timed with
``time.perf_counter`` (on CUDA after ``torch.cuda.synchronize()``):

* sampling: ``PatchSampler.sample`` (random crops with foreground oversampling, numpy);
* augmentation: to tensors on the device and ``augment_batch`` (spatial and intensity, torch);
* forward, loss (deep supervision loss and finiteness check), backward (``zero_grad`` and ``backward``),
  optimizer (gradient clipping, ``step``, reading the loss).

A free-running pass (no synchronisation between phases) of the same length gives the iterations per second; the
phase-timed pass follows it. FLOPs per iteration are 3x ``carve.training.network.forward_flops`` x batch (forward plus
backward); the ceiling of each precision is measured in the same run by a Conv3d 3x3x3 (64 channels on 32^3)
forward plus backward probe under the same threads, precision and memory format.
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
from carve.training.network import UNet3D, forward_flops
from carve.training.precision import autocast, bf16_available
from carve.training.sampling import PatchSampler
from carve.training.train import TrainConfig, _build_optimizer, configure_determinism, deep_supervision_loss, lr_factor

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "throughput.md"
TITLE = "# Training throughput: iterations per second in fp32 and bf16, and where the time goes"
VARIANTS = ("fp32", "fp32-cl", "bf16", "bf16-cl")
PHASES = ("sampling", "augmentation", "forward", "loss", "backward", "optimizer")
DATA_PHASES, MODEL_PHASES = PHASES[:2], PHASES[2:]
SPACING_MM = (1.0, 1.0, 1.0)


# ---- data and the plan ---------------------------------------------------------------------------------
def case_files(synthetic: bool, folder: Path, scratch: Path) -> tuple[list[tuple[Path, Path]], str]:
    """(image, label) files of the 10 hippocampus10 cases, or of 10 hippocampus-sized synthetic cases written to
    ``scratch`` (36x50x36 at 1 mm, labels 0-2, carve.pipeline.synth)."""
    if not synthetic and (folder / "imagesTr").is_dir():
        paths = [(p, folder / "labelsTr" / p.name) for p in sorted((folder / "imagesTr").glob("*.nii.gz"))]
        return paths, "hippocampus10"
    from carve.imaging.io import write_image
    from carve.pipeline.synth import synthesize_case

    paths = []
    for seed in range(10):
        image, label, geometry = synthesize_case(seed, shape=(36, 50, 36), spacing_mm=(1.0, 1.0, 1.0))
        pair = (scratch / f"case_{seed}_image.nii.gz", scratch / f"case_{seed}_label.nii.gz")
        write_image(pair[0], image.astype(np.float32), geometry)
        write_image(pair[1], label.astype(np.uint8), geometry)
        paths.append(pair)
    return paths, "synthetic (carve.pipeline.synth)"


def planned_recipe(paths: list[tuple[Path, Path]]) -> tuple[dict, TrainConfig]:
    """carve's plan of these cases (default PlanOptions, MR, labels 1-2) and the fold's TrainConfig from it."""
    from carve.planning.plan import PlanOptions, fingerprint, make_plans
    from carve.training.fold import train_config_from

    fp = fingerprint([i for i, _ in paths], [lab for _, lab in paths])
    plans = make_plans(fp, {1: "anterior", 2: "posterior"}, PlanOptions(modality="MR"))
    return plans, train_config_from(plans, {}, seed=0, iterations=1)


def load_cases(paths: list[tuple[Path, Path]], plans: dict, scratch: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cases as the pipeline's rule ``preprocess`` stores them for training (canonical orientation, the plan's
    spacing and normalisation; (C, z, y, x) float32, labels uint8)."""
    from carve.planning.preprocess import load_case, preprocess_case

    cases = []
    for k, (image, label) in enumerate(paths):
        preprocess_case(image, label, plans, scratch / f"{k}.npz")
        data, labels, _ = load_case(scratch / f"{k}.npz")
        cases.append((data, labels))
    return cases


def _shape_range(cases) -> str:
    shapes = np.asarray([lab.shape for _, lab in cases])
    lo, hi = shapes.min(0), shapes.max(0)
    return "x".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(lo, hi, strict=True))


# ---- the training step, phase by phase -----------------------------------------------------------------
class Trainer:
    """train_fold's setup and inner step, with a clock around each phase."""

    def __init__(self, cases, config: TrainConfig, device: str, threads: int, variant: str = "fp32"):
        torch.set_num_threads(threads)
        configure_determinism(device, config.deterministic)
        self.config, self.device = config, device
        self.net_cfg = replace(config.network, deep_supervision=config.deep_supervision)
        torch.manual_seed(config.seed)
        self.channels_last = variant.endswith("-cl")
        self.memory_format = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        self.model = UNet3D(self.net_cfg).to(device, memory_format=self.memory_format)
        self.optimizer = _build_optimizer(self.model, config, logging.getLogger("bench.throughput"))
        margin = spatial_margin(config.augment, config.patch_size, config.spacing_mm)
        self.crop_size = tuple(p + 2 * m for p, m in zip(config.patch_size, margin, strict=True))
        rng = np.random.default_rng([config.seed, 1])
        self.sampler = PatchSampler(cases, self.crop_size, self.net_cfg.n_classes, config.foreground_fraction, rng)
        self.aug_gen = torch.Generator().manual_seed(config.seed + 2)
        self.precision = variant.removesuffix("-cl")
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
        x = x.contiguous(memory_format=self.memory_format)
        t.append(clock())
        with autocast(self.device, self.precision):
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


def ceiling_gflops(device: str, variant: str = "fp32", repeats: int = 5) -> float:
    """GFLOP/s of a Conv3d 3x3x3, 64 channels on 32^3, forward plus backward (3x the forward's FLOPs), in the
    variant's precision and memory format."""
    fmt = torch.channels_last_3d if variant.endswith("-cl") else torch.contiguous_format
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device, memory_format=fmt)
    x = torch.randn(1, 64, 32, 32, 32, device=device).contiguous(memory_format=fmt).requires_grad_(True)
    flops = 3 * 2 * 27 * 64 * 64 * 32**3
    cuda = str(device).startswith("cuda")
    times = []
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device, variant.removesuffix("-cl")):
            y = conv(x)
        y.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up runs
            times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def measure(cases, config: TrainConfig, args, variant: str) -> dict:
    """One variant: warm-up, a free-running pass, a phase-timed pass, and its ceiling probe."""
    trainer = Trainer(cases, config, args.device, args.threads, variant)
    total = args.warmup + 2 * args.iterations
    for _ in range(args.warmup):
        trainer.step(trainer.iteration / total, timed=False)
    free = [trainer.step(trainer.iteration / total, timed=False)["total"] for _ in range(args.iterations)]
    phases = [trainer.step(trainer.iteration / total, timed=True) for _ in range(args.iterations)]
    return {"free": free, "phases": phases, "ceiling": ceiling_gflops(args.device, variant), "skipped": trainer.skipped}


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


def _per_iteration(phases) -> dict[str, float]:
    return {p: statistics.mean(ph[p] for ph in phases) for p in PHASES}


def render(args, data: str, config: TrainConfig, results: dict[str, dict], left_out: str, total_s: float) -> str:
    flops = 3 * forward_flops(config.network, config.patch_size) * config.batch_size
    base = statistics.mean(results["fp32"]["free"]) if "fp32" in results else None
    fp32_ceiling = results["fp32"]["ceiling"] if "fp32" in results else None
    flags = f" --device {args.device} --threads {args.threads} --iterations {args.iterations} --warmup {args.warmup}"
    flags += f" --variants {','.join(args.variants)}" + (" --synthetic" if args.synthetic else "")
    net = config.network
    summary = []
    for variant, r in results.items():
        free_mean = statistics.mean(r["free"])
        per_iter = _per_iteration(r["phases"])
        timed = sum(per_iter.values())
        model_share = sum(per_iter[p] for p in MODEL_PHASES) / timed
        achieved = flops / free_mean / 1e9
        speedup = f"{base / free_mean:.2f}x" if base else "-"
        of_fp32 = f"{100 * achieved / fp32_ceiling:.0f}%" if fp32_ceiling else "-"
        summary.append(
            f"| {variant} | {1 / free_mean:.2f} | {statistics.median(r['free']):.3f} | {speedup} | "
            f"{100 * model_share:.1f}% | {achieved:.1f} | {r['ceiling']:.1f} | {100 * achieved / r['ceiling']:.0f}% | "
            f"{of_fp32} |"
        )
    phase_rows = [
        f"| {p} | " + " | ".join(f"{1e3 * _per_iteration(r['phases'])[p]:.1f}" for r in results.values()) + " |"
        for p in PHASES
    ]
    phase_rows.append(
        "| iteration | "
        + " | ".join(f"{1e3 * sum(_per_iteration(r['phases']).values()):.1f}" for r in results.values())
        + " |"
    )
    skipped = {v: r["skipped"] for v, r in results.items() if r["skipped"]}
    lines = [
        f"### {'CUDA' if args.device.startswith('cuda') else 'CPU'}",
        "",
        f"Machine: {machine_line(args.device, args.threads)}.",
        "",
        f"`python bench/bench_throughput.py{flags}`; whole run {total_s:.0f} s{_load_end()}. Data: {data}. Recipe: "
        f"carve's plan of these cases turned into the fold's TrainConfig (no `train` keys): batch {config.batch_size}, "
        f"patch {'x'.join(map(str, config.patch_size))} (crops of {'x'.join(map(str, _crop(config)))} for the "
        f"spatial augmentation), U-Net {net.channels[0]}-{net.channels[-1]} channels in {net.n_stages} stages, deep "
        f"supervision, AdamW. Per variant, from the same seed: {args.warmup} warm-up iterations, then "
        f"{args.iterations} free-running and {args.iterations} phase-timed ones"
        + (f" (skipped for a non-finite loss: {skipped})" if skipped else "")
        + f"; then the variant's ceiling probe. {left_out}",
        "",
        f"GFLOP per iteration (3x forward x batch): {flops / 1e9:.1f}. Ceiling: a Conv3d 3x3x3, 64 channels on 32^3, "
        "forward plus backward, in the variant's precision and memory format.",
        "",
        "| variant | iterations/s | s/iteration (median) | speed-up over fp32 | model share | GFLOP/s | "
        "ceiling GFLOP/s | share of its ceiling | share of the fp32 ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *summary,
        "",
        "Mean ms per phase (phase-timed pass"
        + (", synchronised after each phase" if args.device != "cpu" else "")
        + "):",
        "",
        "| phase | " + " | ".join(results) + " |",
        "|---|" + "---:|" * len(results),
        *phase_rows,
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
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--iterations", type=int, default=30, help="measured iterations per pass")
    parser.add_argument("--warmup", type=int, default=5, help="iterations before measuring")
    parser.add_argument(
        "--variants", type=lambda v: v.split(","), default=list(VARIANTS), help=f"comma-separated of {VARIANTS}"
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic cases instead of hippocampus10")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file (this device's section is replaced)")
    if argv is None and __name__ != "__main__":  # called by run_all.py: defaults, not run_all's arguments
        argv = []
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: {unknown} not among {VARIANTS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    start = time.perf_counter()
    folder = Path(os.environ.get("CARVE_SHARED_DATA", BENCH.parent.parent / "shared" / "data")) / "hippocampus10"
    with tempfile.TemporaryDirectory() as scratch:
        paths, source = case_files(args.synthetic, folder, Path(scratch))
        plans, config = planned_recipe(paths)
        cases = load_cases(paths, plans, Path(scratch))
    data = f"{source} ({len(cases)} cases, {_shape_range(cases)} at the plan's spacing)"
    runnable = [v for v in args.variants if not v.startswith("bf16") or bf16_available(args.device)]
    dropped = [v for v in args.variants if v not in runnable]
    left_out = f"Left out, the device has no native bf16: {', '.join(dropped)}." if dropped else ""
    results = {variant: measure(cases, config, args, variant) for variant in runnable}
    text = render(args, data, config, results, left_out, time.perf_counter() - start)
    write_section(args.out, args.device, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
