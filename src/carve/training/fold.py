"""Per-fold steps: build the resolved training configuration from the plans, train a fold, and predict
with the right models (the whole ensemble for test cases, the held-out fold for training cases)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from carve.errors import InputError
from carve.imaging.io import atomic_write_text
from carve.planning.plan import load_plans, plans_for_dataset
from carve.planning.preprocess import case_name, load_case, map_case_image
from carve.planning.split import fold_of, load_splits
from carve.prediction.predict import PredictOptions, predict_case, select_device
from carve.training.budget import BUDGET_KEYS, planned_channels_last, planned_iterations, planned_precision
from carve.training.precision import runnable_precision

log = logging.getLogger("carve.training.fold")
MIRROR_PROBABILITY = 0.5  # per planned mirror axis, in training (nnU-Net's)


def train_config_from(
    plans: Mapping, options: Mapping[str, Any], seed: int, iterations: int | None = None, supervised: bool = False
):
    """The resolved :class:`carve.training.train.TrainConfig` of a fold: plans first, then the config's ``train``
    keys. The fold trains ``iterations``, else the count fixed when the run was planned (``plans["training"]``,
    :mod:`carve.training.budget`; with ``supervised`` a supervised model's count of the same budget, where the folds
    train a mean teacher's dearer step); the config's budget keys only decide that count."""
    from carve.training.augment import AugmentConfig
    from carve.training.network import NetworkConfig
    from carve.training.train import TrainConfig

    net = plans["network"]
    network = NetworkConfig(
        in_channels=len(plans["channels"]),
        n_classes=int(plans["n_classes"]),
        base_channels=int(net["base_channels"]),
        max_channels=int(net["max_channels"]),
        strides=tuple(tuple(int(v) for v in s) for s in net["strides"]),
        kernel_sizes=tuple(tuple(int(v) for v in k) for k in net["kernel_sizes"]),
    )
    opts = {k: v for k, v in options.items() if v is not None and k not in (*BUDGET_KEYS, "precision")}
    augment_keys = dict(opts.pop("augment", {}))
    planned = [k for k in ("mirror_axes", "p_mirror") if k in augment_keys]
    if planned:
        raise InputError(
            f"train.augment.{planned[0]}: mirroring is planned (plan.mirror_axes, canonical axes) so that prediction "
            "flips exactly the axes training flipped; set it there"
        )
    mirror_axes = tuple(int(a) for a in plans.get("mirror_axes", ()))
    augment_keys.update(mirror_axes=mirror_axes, p_mirror=MIRROR_PROBABILITY if mirror_axes else 0.0)
    augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment_keys.items()})
    return TrainConfig(
        **opts,
        iterations=int(iterations) if iterations is not None else planned_iterations(plans, supervised=supervised),
        precision=planned_precision(plans),
        channels_last=planned_channels_last(plans),
        epochs=None,
        time_budget_min=None,
        batch_size=int(plans["batch_size"]),
        patch_size=tuple(int(p) for p in plans["patch_size"]),
        spacing_mm=tuple(float(s) for s in plans["target_spacing_mm"]),
        seed=int(seed),
        augment=augment,
        network=network,
    )


def load_preprocessed(
    case_paths: Sequence[Path], groups: Sequence[Sequence[str]], where: str
) -> list[list[tuple[Any, Any]]]:
    """(image, label) of each named case, per group, from the preprocessed files ``case_paths``; every name is
    checked before anything is loaded, and ``where`` (what named them) leads the error."""
    by_case = {case_name(p): Path(p) for p in case_paths}
    missing = [c for names in groups for c in names if c not in by_case]
    if missing:
        raise InputError(f"{where} names cases without preprocessed data: {missing}")
    return [[load_case(by_case[c])[:2] for c in names] for names in groups]


def train_one_fold(
    fold: int,
    plans_path: Path,
    splits_path: Path,
    case_paths: Sequence[Path],
    train_options: Mapping[str, Any],
    seed: int,
    out_dir: Path,
    device: str = "auto",
    threads: int = 1,
    case_datasets: Mapping[str, str] | None = None,
    dataset: str | None = None,
    unlabelled_paths: Sequence[Path] = (),
    semi_supervised: Mapping[str, Any] | None = None,
    pseudo_label_dirs: Sequence[Path] = (),
) -> Path:
    """Train fold ``fold`` on its training cases, validating on its held-out cases.

    Plans of several datasets need ``case_datasets`` (case -> dataset); with ``dataset`` the fold trains on
    that dataset's cases only (an individual model, to compare with the shared one). ``semi_supervised``: the
    config's block (:class:`carve.training.semi_supervised.SemiSupervisedOptions`); a method other than none reads
    the preprocessed images ``unlabelled_paths`` (rule ``preprocess_unlabelled``) without labels. A self-training
    student (method ``self_training``) also reads the one folder of ``pseudo_label_dirs`` its teacher wrote
    (:mod:`carve.prediction.pseudo_labels`), which must be teacher fold ``fold``'s, and trains under the noisy
    student's stronger augmentation (:func:`carve.training.augment.stronger`)."""
    from carve.training.augment import stronger
    from carve.training.network import load_payload
    from carve.training.semi_supervised import SemiSupervisedOptions
    from carve.training.train import train_fold

    semi = SemiSupervisedOptions.from_config(semi_supervised)
    if semi.enabled and not unlabelled_paths:
        raise InputError(f"semi_supervised.method '{semi.method}': fold {fold} was given no unlabelled images")

    plans = load_plans(plans_path)
    splits = load_splits(splits_path)
    if not 0 <= fold < len(splits):
        raise InputError(f"{splits_path}: there is no fold {fold} (folds 0..{len(splits) - 1})")
    names = {"train": list(splits[fold]["train"]), "val": list(splits[fold]["val"])}
    if dataset is not None:
        names = {k: [c for c in v if (case_datasets or {}).get(c) == dataset] for k, v in names.items()}
        if not names["train"]:
            raise InputError(f"{splits_path}: fold {fold} has no training case of dataset '{dataset}'")
    train_cases, val_cases = load_preprocessed(
        case_paths, (names["train"], names["val"]), f"{splits_path}: fold {fold}"
    )
    domains = _domains(plans, case_datasets, names, train_cases, splits_path)
    config = train_config_from(plans, train_options, seed + fold)
    device = select_device(device)
    config = replace(
        config, precision=runnable_precision(config.precision, device, log, f"fold {fold}: the plans say", "training")
    )
    log.info(
        "fold %d: %d training, %d validation cases; patch %s, batch %d, device %s, %d thread(s), %s",
        fold,
        len(names["train"]),
        len(names["val"]),
        config.patch_size,
        config.batch_size,
        device,
        threads,
        config.precision,
    )
    out_dir = Path(out_dir)
    unlabelled_names = [case_name(p) for p in unlabelled_paths] if semi.enabled else []
    leaked = sorted(set(unlabelled_names) & {*names["train"], *names["val"]})
    if leaked:
        raise InputError(f"fold {fold}: labelled cases {leaked} are among the unlabelled images")
    unlabelled, pseudo_cases, teacher = [], [], None
    if semi.method == "mean_teacher":
        unlabelled = [map_case_image(Path(p)) for p in unlabelled_paths]  # pages, not copies
    elif semi.method == "self_training":
        pseudo_cases, teacher = _student_cases(fold, names, unlabelled_paths, pseudo_label_dirs)
        config = replace(config, augment=stronger(config.augment))
        if semi.student_init == "teacher":
            if not Path(teacher["model"]).is_file():
                raise InputError(f"{pseudo_label_dirs[0]}: the teacher's model {teacher['model']} is gone")
            config = replace(config, pretrained=str(teacher["model"]), pretrained_lr_scale=1.0)
        log.info("fold %d: a student of teacher fold %d round %d", fold, teacher["fold"], teacher["round"])
    model = train_fold(
        train_cases,
        val_cases,
        config,
        out_dir,
        device=device,
        threads=threads,
        domains=domains,
        unlabelled=unlabelled,
        semi=semi if semi.enabled else None,
        pseudo_cases=pseudo_cases,
    )
    resolved = {
        "fold": fold,
        "dataset": dataset,
        "train_cases": names["train"],
        "val_cases": names["val"],
        "train": config.to_dict(),
        "runtime": {
            "device": device,
            "threads": int(threads),
            "precision": config.precision,
            "channels_last": config.channels_last,
        },
        "plans": {
            k: plans[k] for k in ("target_spacing_mm", "patch_size", "normalisation", "n_classes", "labels", "channels")
        },
    }
    extra = load_payload(model)["extra"]
    resolved["val_dice"] = list(extra.get("val_dice") or [])  # of the saved model, at the end of training
    if semi.enabled:
        resolved["semi_supervised"] = {
            **extra.get("semi_supervised", {}),
            **asdict(semi),
            "unlabelled_cases": unlabelled_names,
            **({"teacher": teacher} if teacher is not None else {}),
        }
    atomic_write_text(out_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
    return model


def _student_cases(fold: int, names: Mapping, unlabelled_paths: Sequence[Path], pseudo_label_dirs: Sequence[Path]):
    """(image, pseudo-label) of each image teacher fold ``fold`` pseudo-labelled, and the teacher's record; only
    that teacher's (:func:`carve.training.semi_supervised.student_training_inputs`)."""
    from carve.prediction.pseudo_labels import load_pseudo_labels, read_pseudo_label
    from carve.training.semi_supervised import LABELLED, student_training_inputs

    if len(pseudo_label_dirs) != 1:
        raise InputError(
            f"semi_supervised.method 'self_training': student fold {fold} reads one teacher's pseudo-labels, "
            f"got {len(pseudo_label_dirs)} folder(s)"
        )
    teacher, files = load_pseudo_labels(Path(pseudo_label_dirs[0]))
    try:
        inputs = student_training_inputs(
            fold, names["train"], {int(teacher["fold"]): files}, run_labelled_cases=[*names["train"], *names["val"]]
        )
    except ValueError as err:
        raise InputError(f"{pseudo_label_dirs[0]}: {err}") from None
    images = {case_name(p): Path(p) for p in unlabelled_paths}
    missing = sorted(c.case for c in inputs if c.source != LABELLED and c.case not in images)
    if missing:
        raise InputError(
            f"{pseudo_label_dirs[0]}: pseudo-labels of images that are not among the unlabelled: {missing}"
        )
    pseudo = [(map_case_image(images[c.case]), read_pseudo_label(c.source)) for c in inputs if c.source != LABELLED]
    return pseudo, teacher


def _domains(plans: Mapping, case_datasets: Mapping[str, str] | None, names: Mapping, train_cases, where: Path):
    """The :class:`carve.training.multidomain.DomainSetup` of plans that cover several datasets (else None)."""
    if not plans.get("datasets"):
        return None
    from carve.training.multidomain import domain_setup

    case_datasets = case_datasets or {}
    unnamed = [c for c in [*names["train"], *names["val"]] if c not in case_datasets]
    if unnamed:
        raise InputError(f"{where}: the plans cover several datasets, but cases {unnamed} have no dataset")
    return domain_setup(
        list(plans["datasets"]),
        {n: d["classes"] for n, d in plans["datasets"].items()},
        train_cases,
        [case_datasets[c] for c in names["train"]],
        [case_datasets[c] for c in names["val"]],
        int(plans["n_classes"]),
    )


def predict_with_models(
    case: str,
    image_path: Path,
    plans_path: Path,
    model_paths: Sequence[Path],
    outputs: Sequence[Path],
    predict_options: Mapping[str, Any],
    device: str = "auto",
    threads: int = 1,
    postprocessing_path: Path | None = None,
    dataset: str | None = None,
    members_path: Path | None = None,
    precision_path: Path | None = None,
) -> dict[str, float]:
    """Fold-ensemble prediction of a case; ``outputs`` are (labels, entropy map, scores TSV[, maps folder]),
    see :class:`carve.prediction.predict.PredictOutputs`. With ``postprocessing_path`` (a ``postprocessing.json``) the
    written labels are postprocessed. ``dataset``: the case's dataset when the plans cover several. With
    ``members_path`` (a ``members.json``, :mod:`carve.prediction.members`) the mirrorings and projections are
    used only where that decision kept them; with ``precision_path`` (an ``inference_precision.json``,
    :mod:`carve.prediction.inference_precision`) the forward passes run in the run's decided precision."""
    from carve.prediction.inference_precision import load_inference_channels_last, load_inference_precision
    from carve.prediction.members import load_member_decision, options_after
    from carve.prediction.postprocess import load_postprocessing

    if len(outputs) not in (3, 4):
        raise ValueError(f"outputs are (labels, entropy, scores[, maps folder]), got {len(outputs)} path(s)")
    labels, entropy, scores, *maps = (Path(p) for p in outputs)
    plans = plans_for_dataset(load_plans(plans_path), dataset)
    postprocessing = load_postprocessing(postprocessing_path) if postprocessing_path is not None else None
    options = PredictOptions.from_config(predict_options)
    if members_path is not None:
        options = options_after(options, load_member_decision(members_path))
    if precision_path is not None:
        precision = load_inference_precision(precision_path, select_device(device))
        options = replace(options, precision=precision, channels_last=load_inference_channels_last(precision_path))
    return predict_case(
        case,
        image_path,
        model_paths,
        plans,
        labels,
        entropy,
        scores,
        options,
        device,
        threads,
        postprocessing,
        out_maps=maps[0] if maps else None,
    )


def predict_held_out(
    case: str,
    image_path: Path,
    plans_path: Path,
    splits_path: Path,
    model_paths: Sequence[Path],
    outputs: Sequence[Path],
    predict_options: Mapping[str, Any],
    device: str = "auto",
    threads: int = 1,
    dataset: str | None = None,
    members_path: Path | None = None,
    precision_path: Path | None = None,
) -> dict[str, float]:
    """Cross-validation prediction of a training case by the one fold that did not see it (raw labels)."""
    model = _held_out_model(case, splits_path, model_paths)
    return predict_with_models(
        case,
        image_path,
        plans_path,
        model,
        outputs,
        predict_options,
        device,
        threads,
        dataset=dataset,
        members_path=members_path,
        precision_path=precision_path,
    )


def _held_out_model(case: str, splits_path: Path, model_paths: Sequence[Path]) -> list[Path]:
    fold = fold_of(case, load_splits(splits_path))
    model = [Path(p) for p in model_paths if Path(p).parent.name == f"fold_{fold}"]
    if len(model) != 1:
        raise InputError(f"case '{case}': held out by fold {fold}, but no model of fold {fold} among {model_paths}")
    return model


def compare_held_out_members(
    case: str,
    image_path: Path,
    label_path: Path,
    plans_path: Path,
    splits_path: Path,
    model_paths: Sequence[Path],
    out: Path,
    predict_options: Mapping[str, Any],
    device: str = "auto",
    threads: int = 1,
    dataset: str | None = None,
    precision_path: Path | None = None,
) -> dict[str, Any]:
    """Rule ``compare_members``: the training case predicted by the fold that held it out, plain and with the
    extra members (each through :func:`predict_with_models`, into a scratch folder), scored against its label
    (:func:`carve.prediction.members.comparison_row`); one TSV row."""
    import tempfile

    from carve.imaging.io import read_image
    from carve.prediction.members import comparison_row, plain

    model = _held_out_model(case, splits_path, model_paths)
    options = PredictOptions.from_config(predict_options)
    variants = {"plain": asdict(plain(options)), "extra": dict(predict_options)}
    labels, scores = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"compare_members_{case}_") as scratch:
        for name, variant in variants.items():
            outputs = [Path(scratch) / f"{name}_{f}" for f in ("labels.nii.gz", "entropy.nii.gz", "scores.tsv")]
            scores[name] = predict_with_models(
                case,
                image_path,
                plans_path,
                model,
                outputs,
                variant,
                device,
                threads,
                dataset=dataset,
                precision_path=precision_path,
            )
            labels[name] = read_image(outputs[0])[0]
    reference = read_image(label_path)[0]
    values = sorted(int(k) for k in plans_for_dataset(load_plans(plans_path), dataset)["labels"])
    row = comparison_row(case, reference, labels, scores, values)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out), pd.DataFrame([row]).to_csv(sep="\t", index=False))
    log.info("case '%s': mean Dice plain %.4f, with the extra members %.4f", case, row["plain_dice"], row["extra_dice"])
    return row
