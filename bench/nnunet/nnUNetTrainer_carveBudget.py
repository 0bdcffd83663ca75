"""nnU-Net v2 trained to a wall-clock budget: the nnU-Net side of carve's bench/bench_training_quality.py.

The benchmark copies this file to the top level of ``nnunetv2/training/nnUNetTrainer/`` in the nnU-Net venv
(bench/requirements-nnunet.txt), where nnU-Net's trainer lookup finds it before it imports the variants/primus
modules (those need torchvision, absent there). It then runs

    CARVE_BENCH_BUDGET_MIN=5 nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainer_carveBudget -device cpu

What differs from ``nnUNetTrainer``, and nothing else (plan, network, augmentation, batch size, foreground
oversampling, deep supervision, loss, SGD with Nesterov momentum 0.99 at 1e-2 all stay nnU-Net's own):

* training stops when ``CARVE_BENCH_BUDGET_MIN`` minutes of wall clock have passed since the first iteration;
* nnU-Net's poly learning-rate decay (its ``PolyLRScheduler``, exponent 0.9) runs over elapsed seconds instead of
  epochs and is stepped before every iteration, so it reaches its end exactly at the budget (over nnU-Net's 1000
  epochs its per-epoch steps are fine-grained; a 5-minute budget holds less than one of its epochs);
* epochs of 50 iterations instead of 250 (an epoch is now only the unit of logging and checkpointing: 250
  iterations at ~1.6 s would exceed a 5-minute budget), with 1 pseudo-Dice validation batch per epoch instead
  of 50 (50 forward passes take ~25 s here, a third of a 50-iteration epoch);
* no end-of-training validation (``perform_actual_validation``): the benchmark predicts the held-out cases
  itself, with this file's ``predict`` command;
* the device is the CPU and torch uses ``CARVE_BENCH_THREADS`` threads (default 2; nnUNetv2_train would set
  one per core).

Run as a script in the nnU-Net venv, it predicts images with one trained fold, without and with test-time
mirroring, and prints the seconds each took as JSON:

    python nnUNetTrainer_carveBudget.py predict --model RESULTS/TRAINER__PLANS__3d_fullres --fold 0 \\
        --out OUT IMAGE_0000.nii.gz ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_ENV = "CARVE_BENCH_BUDGET_MIN"
THREADS_ENV = "CARVE_BENCH_THREADS"
SUMMARY = "carve_budget.json"
CPU = torch.device("cpu")


def _threads() -> int:
    return int(os.environ.get(THREADS_ENV, "2"))


class nnUNetTrainer_carveBudget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming scheme)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = CPU):
        super().__init__(plans, configuration, fold, dataset_json, CPU)  # the CPU whatever -device says
        budget = os.environ.get(BUDGET_ENV)
        if not budget:
            raise RuntimeError(f"{type(self).__name__} trains to a wall-clock budget: set {BUDGET_ENV} (minutes)")
        self.budget_s = float(budget) * 60
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 1
        self.iterations = 0
        self._start: float | None = None
        torch.set_num_threads(_threads())

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.budget_s)

    def _elapsed(self) -> float:
        return 0.0 if self._start is None else time.monotonic() - self._start

    def _step_lr(self) -> None:
        self.lr_scheduler.step(min(self._elapsed(), self.budget_s))

    def on_train_epoch_start(self):
        self.network.train()
        self._step_lr()
        lr = self.optimizer.param_groups[0]["lr"]
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch} at {self._elapsed():.0f} s of {self.budget_s:.0f} s")
        self.print_to_log_file(f"Current learning rate: {np.round(lr, decimals=5)}")
        self.logger.log("lrs", lr, self.current_epoch)

    def run_training(self):
        self.on_train_start()
        self._start = time.monotonic()
        while self.current_epoch < self.num_epochs and self._elapsed() < self.budget_s:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if self._elapsed() >= self.budget_s:
                    break
                self._step_lr()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations += 1
            if not train_outputs:
                break
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        seconds = self._elapsed()
        self.on_train_end()
        summary = {
            "budget_s": self.budget_s,
            "train_seconds": round(seconds, 2),
            "iterations": self.iterations,
            "epochs": self.current_epoch,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "batch_size": self.batch_size,
            "patch_size": list(self.configuration_manager.patch_size),
            "threads": torch.get_num_threads(),
        }
        Path(self.output_folder, SUMMARY).write_text(json.dumps(summary, indent=1))
        self.print_to_log_file(f"carve budget: {summary}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("end-of-training validation skipped: the benchmark predicts the held-out cases itself")


def predict(model: Path, fold: int, images: list[Path], out: Path) -> dict[str, float]:
    """Predict ``images`` (nnU-Net's ``_0000`` names) with one fold into out/no_mirroring and out/mirroring;
    returns the seconds of each pass (model loading included once, in the first)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(_threads())
    seconds = {}
    start = time.monotonic()
    predictor = nnUNetPredictor(use_mirroring=False, device=CPU, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (fold,), "checkpoint_final.pth")
    for name, mirroring in (("no_mirroring", False), ("mirroring", True)):
        predictor.use_mirroring = mirroring
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        outputs = [str(folder / image.name.removesuffix("_0000.nii.gz")) for image in images]
        predictor.predict_from_files_sequential([[str(image)] for image in images], outputs, False, True, None)
        seconds[name] = round(time.monotonic() - start, 2)
        start = time.monotonic()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict images with one trained fold, without and with mirroring")
    p.add_argument("--model", type=Path, required=True, help="the trainer's results folder (holds fold_N/)")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print(json.dumps(predict(args.model, args.fold, args.images, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
