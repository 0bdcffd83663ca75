"""Self-training's teacher step (issue #19): one trained fold pseudo-labels the preprocessed unlabelled images.

Rule ``pseudo_label_fold`` writes, into one folder per teacher round and fold
(``pseudo_labels/round_<r>/fold_<k>/``): ``<case>.npz`` per image (``label``: uint8 on the preprocessed grid, the
teacher's argmax where its largest class probability reaches ``semi_supervised.confidence_threshold``,
:data:`carve.training.semi_supervised.IGNORE_LABEL` elsewhere), ``pseudo_labels.tsv`` (per image: the share of
voxels kept and the share of foreground among them) and ``teacher.json`` (which fold and round made them, from
which model file). The teacher predicts on the grid training reads, with the sliding window of the pipeline's
prediction (:func:`carve.prediction.inference.sliding_window_probabilities`: Gaussian-weighted windows at
``overlap``, mirrored along the axes training flipped), in the precision its fold trained in.

Student fold k reads only teacher fold k's folder (:func:`carve.training.semi_supervised.student_training_inputs`):
the other folds' teachers were trained on fold k's validation cases.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carve.errors import InputError
from carve.imaging.io import atomic_write_bytes, atomic_write_text
from carve.planning.plan import load_plans
from carve.planning.preprocess import case_name, load_case

log = logging.getLogger("carve.prediction.pseudo_labels")
TEACHER_FILE = "teacher.json"
TABLE_FILE = "pseudo_labels.tsv"
DEFAULT_OVERLAP = 0.5


def pseudo_label_images(
    model_path: Path,
    plans_path: Path,
    image_paths: Sequence[Path],
    out_dir: Path,
    semi_supervised: Mapping[str, Any],
    fold: int,
    round_index: int,
    device: str = "auto",
    threads: int = 1,
) -> pd.DataFrame:
    """Rule ``pseudo_label_fold``: the teacher ``model_path`` (fold ``fold``, round ``round_index``) pseudo-labels
    each preprocessed image of ``image_paths`` into ``out_dir`` (see the module docstring); returns the table."""
    import torch

    from carve.prediction.inference import sliding_window_probabilities
    from carve.prediction.predict import prediction_mirror_axes, select_device
    from carve.training.budget import planned_precision
    from carve.training.network import load_model
    from carve.training.precision import runnable_precision
    from carve.training.semi_supervised import IGNORE_LABEL, SemiSupervisedOptions, masked_pseudo_labels

    options = SemiSupervisedOptions.from_config(semi_supervised)
    if not image_paths:
        raise InputError(f"fold {fold}: no unlabelled images to pseudo-label")
    torch.set_num_threads(threads)
    device = select_device(device)
    plans = load_plans(plans_path)
    precision = runnable_precision(planned_precision(plans), device, log, "the plans say", "pseudo-labelling")
    model, _ = load_model(model_path, device=device)
    n_classes, patch = int(plans["n_classes"]), tuple(int(p) for p in plans["patch_size"])
    mirror_axes = prediction_mirror_axes(plans)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in image_paths:
        image = load_case(Path(path))[0]
        result = sliding_window_probabilities(
            [model], image, patch, n_classes=n_classes, overlap=DEFAULT_OVERLAP, mirror_axes=mirror_axes,
            device=device, precision=precision, uncertainty=False,
        )  # fmt: skip
        labels, kept = masked_pseudo_labels(np.asarray(result.mean_probabilities, dtype=np.float32), options)
        valid = labels[labels != IGNORE_LABEL]
        foreground = float(np.mean(valid > 0)) if valid.size else 0.0
        buffer = io.BytesIO()
        np.savez_compressed(buffer, label=labels)
        atomic_write_bytes(out_dir / f"{case_name(path)}.npz", buffer.getvalue())
        rows.append({"case": case_name(path), "kept_fraction": kept, "foreground_fraction_of_kept": foreground})
        log.info("'%s': %.1f %% of the voxels kept, %.1f %% of them foreground", rows[-1]["case"], 100 * kept,
                 100 * foreground)  # fmt: skip
    table = pd.DataFrame(rows)
    teacher = {
        "fold": int(fold),
        "round": int(round_index),
        "model": str(model_path),
        "confidence_threshold": options.confidence_threshold,
        "precision": precision,
        "mirror_axes": list(mirror_axes),
        "overlap": DEFAULT_OVERLAP,
    }
    atomic_write_text(out_dir / TABLE_FILE, table.to_csv(sep="\t", index=False, float_format="%.6g"))
    atomic_write_text(out_dir / TEACHER_FILE, json.dumps(teacher, indent=2) + "\n")
    log.info("fold %d round %d: %d image(s), %.1f %% of their voxels kept on average", fold, round_index, len(rows),
             100 * table["kept_fraction"].mean())  # fmt: skip
    return table


def load_pseudo_labels(folder: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The teacher record and {case: pseudo-label file} of a folder written by :func:`pseudo_label_images`."""
    folder = Path(folder)
    record = folder / TEACHER_FILE
    if not record.is_file():
        raise InputError(f"{folder}: no {TEACHER_FILE}; not a pseudo-label folder (rule pseudo_label_fold)")
    teacher = json.loads(record.read_text())
    files = {case_name(p): p for p in sorted(folder.glob("*.npz"))}
    return teacher, files


def read_pseudo_label(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["label"]
