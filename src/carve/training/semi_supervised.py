"""Semi-supervised training from unlabelled scans (issue #19): the pure building blocks, over tensors and arrays.

Two methods, chosen by the config's ``semi_supervised.method`` (:class:`SemiSupervisedOptions`):

- ``self_training``: each fold's trained model (the *teacher*) predicts the unlabelled scans; its argmax becomes a
  pseudo-label and its confidence a per-voxel weight (:func:`pseudo_labels`): ``mask`` keeps the voxels whose
  maximum probability reaches ``confidence_threshold`` with weight 1 and drops the others, ``confidence`` weighs
  every voxel by that probability rescaled so that a uniform guess weighs 0 and certainty 1. A *student* is then
  trained on the labelled cases plus the pseudo-labelled ones, their loss the voxel-weighted cross-entropy
  (:func:`weighted_cross_entropy`); ``rounds`` repeats this with the student as the next teacher.
  Without leakage: student fold k learns only from teacher fold k's pseudo-labels (:func:`student_training_inputs`),
  because the teachers of the other folds were trained on fold k's validation cases.
- ``mean_teacher`` (Tarvainen & Valpola 2017; UA-MT, Yu et al. 2019, for 3D segmentation): the teacher is an
  exponential moving average of the student's weights (:func:`ema_update_`), and on ``unlabelled_per_batch``
  unlabelled patches per batch the student's softmax is pulled towards the teacher's
  (:func:`consistency_loss`), the term's weight ``consistency_weight`` ramped up over the first ``rampup_fraction``
  of training (:func:`consistency_rampup`), while the teacher is still random. With ``copy_paste`` (bidirectional
  copy-paste, Bai et al. 2023) the network sees each unlabelled patch mixed with a labelled one instead
  (:func:`copy_paste_mix`): a box of one pasted into the other, its target the label where the labelled patch shows
  and the teacher's argmax where the unlabelled one shows; that loss takes the consistency term's place and weight.

Importing this module does not import torch (the options are checked with the config, before any job).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from carve.errors import InputError

if TYPE_CHECKING:
    import torch

METHODS = ("none", "self_training", "mean_teacher")
WEIGHTINGS = ("mask", "confidence")
STUDENT_INITS = ("scratch", "teacher")
SUM_TOLERANCE = 1e-3  # a voxel's class probabilities must sum to 1 within this
IGNORE_LABEL = 255  # a pseudo-label's masked voxel: no loss (carve.training.train.deep_supervision_loss)
LABELLED = "labelled"  # the source of a case read with its own labels (student_training_inputs)
_KEY = "semi_supervised"


@dataclass(frozen=True)
class SemiSupervisedOptions:
    """The config's ``semi_supervised`` block. Every value is checked here, so that a direct construction is
    refused like a config (:class:`carve.errors.InputError`, naming ``semi_supervised.<key>``)."""

    method: str = "none"  # none | self_training | mean_teacher
    use_test_images: bool = False  # the test cases' images are unlabelled training images too (transductive)
    # self-training
    confidence_threshold: float = 0.9  # mask weighting: teacher max-probability below it weighs 0
    weighting: str = "mask"  # mask | confidence (max-probability rescaled: 1/n_classes -> 0, 1 -> 1)
    rounds: int = 1  # teacher -> student rounds; each round's student teaches the next
    pseudo_fraction: float = 0.5  # share of each batch's patches drawn from the pseudo-labelled images
    student_init: str = "scratch"  # scratch (noisy student) | teacher (the student starts from its teacher's weights)
    # mean teacher
    ema_decay: float = 0.99  # teacher <- decay * teacher + (1 - decay) * student, after every step
    consistency_weight: float = 1.0  # weight of the consistency term once ramped up
    rampup_fraction: float = 0.4  # of training over which the consistency weight ramps up (0: none)
    unlabelled_per_batch: int = 2  # unlabelled patches added to each batch
    noise_std: float = 0.1  # Gaussian noise (clipped at 2 SD) added to each view of an unlabelled patch
    copy_paste: bool = False  # mix labelled and unlabelled patches (bidirectional copy-paste) instead of consistency
    copy_paste_fraction: float = 2 / 3  # the pasted box's share of each side of the patch

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("student_init", self.student_init, STUDENT_INITS)
        for name, low, high, high_open in (
            ("confidence_threshold", 0.0, 1.0, False),
            ("ema_decay", 0.0, 1.0, True),  # 1 would never move the teacher from its random start
            ("consistency_weight", 0.0, math.inf, True),
            ("rampup_fraction", 0.0, 1.0, False),
            ("noise_std", 0.0, math.inf, True),
            ("pseudo_fraction", 0.0, 1.0, False),
            ("copy_paste_fraction", 0.0, 1.0, False),
        ):
            object.__setattr__(self, name, _number(name, getattr(self, name), low, high, high_open))
        for name in ("rounds", "unlabelled_per_batch"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        for name in ("use_test_images", "copy_paste"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{_KEY}.{name}: {getattr(self, name)!r} is not true or false")
        if self.copy_paste and self.method != "mean_teacher":
            raise InputError(f"{_KEY}.copy_paste: mixes patches inside a mean teacher's job; method is '{self.method}'")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> SemiSupervisedOptions:
        """Options from the config's ``semi_supervised`` block (absent or null: the defaults, method ``none``).
        Unknown keys are refused, with the known ones."""
        if block is None:
            return cls()
        if not isinstance(block, Mapping):
            raise InputError(f"{_KEY}: must be a mapping of options, got {type(block).__name__}")
        known = [f.name for f in fields(cls)]
        for key in block:
            if key not in known:
                raise InputError(f"{_KEY}.{key}: unknown option; the options are {', '.join(known)}")
        return cls(**block)


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"{_KEY}.{name}: {value!r} is not one of {', '.join(allowed)}")


def _number(name: str, value: Any, low: float, high: float, high_open: bool) -> float:
    """``value`` as a float in [low, high] (or [low, high) with ``high_open``); booleans and text are refused."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low <= value and (value < high if high_open else value <= high):
        return float(value)
    bound = f"[{low:g}, {high:g}{')' if high_open else ']'}" if math.isfinite(high) else f">= {low:g}"
    raise InputError(f"{_KEY}.{name}: {value!r} is not a number in {bound}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise InputError(f"{_KEY}.{name}: {value!r} is not a whole number >= 1")


def pseudo_labels(probabilities: np.ndarray | torch.Tensor, options: SemiSupervisedOptions) -> tuple[Any, Any]:
    """(labels, weights) of one case from a teacher's ``(n_classes, z, y, x)`` class probabilities.

    labels: the argmax (ties: the lowest class), ``uint8`` for a numpy array (``int64`` beyond 256 classes), ``long``
    for a tensor (what the cross-entropy takes). weights: float32, per voxel, by ``options.weighting``: ``mask``
    1 where the maximum probability reaches ``confidence_threshold`` (compared in the probabilities' precision, so a
    stored 0.9 is kept at 0.9) and 0 elsewhere; ``confidence`` the maximum probability p rescaled,
    (p - 1/n) / (1 - 1/n), clipped to [0, 1] (the threshold is not used). Probabilities that are negative or do not
    sum to 1 within :data:`SUM_TOLERANCE` are refused (ValueError): they are logits, or a map of another kind."""
    is_tensor = not isinstance(probabilities, np.ndarray) and type(probabilities).__module__.startswith("torch")
    p = probabilities if is_tensor else np.asarray(probabilities)
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"probabilities must be (n_classes >= 2, z, y, x), got shape {tuple(p.shape)}")
    n_classes = int(p.shape[0])
    if is_tensor:
        p = p.detach().float()
        sums, smallest = p.sum(0), float(p.min())
        sums_ok = bool(((sums - 1).abs() <= SUM_TOLERANCE).all())
        p_max, labels = p.max(0)
        weights = (p_max >= options.confidence_threshold).float() if options.weighting == "mask" else None
    else:
        if not np.issubdtype(p.dtype, np.floating):
            p = p.astype(np.float32)
        sums, smallest = p.sum(0, dtype=np.float64), float(p.min())
        sums_ok = bool(np.all(np.abs(sums - 1) <= SUM_TOLERANCE))
        p_max = p.max(0)
        labels = p.argmax(0).astype(np.uint8 if n_classes <= 256 else np.int64)
        threshold = p.dtype.type(options.confidence_threshold)
        weights = (p_max >= threshold).astype(np.float32) if options.weighting == "mask" else None
    if not sums_ok or not smallest >= -SUM_TOLERANCE:  # `not >=`: a NaN fails too
        raise ValueError(
            f"probabilities must be non-negative and sum to 1 within {SUM_TOLERANCE:g} per voxel "
            f"(smallest value {smallest:.4g}); logits must go through a softmax first"
        )
    if weights is None:  # confidence weighting
        uniform = 1.0 / n_classes
        scaled = (p_max - uniform) / (1.0 - uniform)
        weights = scaled.clamp(0, 1) if is_tensor else np.clip(scaled, 0, 1).astype(np.float32)
    return labels, weights


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, C, *spatial) against ``labels`` (B, *spatial), each voxel weighted by
    ``weights`` (B, *spatial, >= 0) and averaged over the sum of the weights: a pseudo-labelled case's loss,
    where a dropped voxel (weight 0) counts for nothing, whatever its label or its logits. All weights 0: a loss of
    0 (with zero gradients), never NaN. Taken in float32, as the training's other losses."""
    import torch
    import torch.nn.functional as F

    if labels.shape != weights.shape or logits.ndim != labels.ndim + 1:
        raise ValueError(f"labels {tuple(labels.shape)} and weights {tuple(weights.shape)} must both be (B, *spatial)")
    if logits.shape[:1] + logits.shape[2:] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    weights = weights.float()
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    per_voxel = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    weighted = torch.where(weights > 0, per_voxel * weights, torch.zeros_like(per_voxel))
    return weighted.sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


def ema_update_(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """In place: each teacher parameter <- ``decay`` x itself + (1 - ``decay``) x the student's (the mean teacher's
    exponential moving average); buffers (normalisation running statistics, counters) are copied from the student,
    as averaging them means nothing. Models whose parameter or buffer names or shapes differ are refused
    (ValueError), as is a decay outside [0, 1]: 0 copies the student, 1 keeps the teacher's parameters."""
    import torch

    if not 0.0 <= decay <= 1.0:  # a NaN fails too
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    pairs = []
    for kind, ours, theirs in (
        ("parameter", teacher.named_parameters(), student.named_parameters()),
        ("buffer", teacher.named_buffers(), student.named_buffers()),
    ):
        t, s = dict(ours), dict(theirs)
        t_shapes, s_shapes = {k: tuple(v.shape) for k, v in t.items()}, {k: tuple(v.shape) for k, v in s.items()}
        if t_shapes != s_shapes:
            differ = sorted(k for k in t_shapes.keys() | s_shapes.keys() if t_shapes.get(k) != s_shapes.get(k))
            raise ValueError(f"teacher and student differ in {kind}s {differ[:5]}: not the same network")
        pairs.append([(t[k], s[k]) for k in t])
    with torch.no_grad():
        for t, s in pairs[0]:
            t.mul_(decay).add_(s.detach().to(t.device, t.dtype), alpha=1.0 - decay)
        for t, s in pairs[1]:
            t.copy_(s)


def consistency_rampup(progress: float, rampup_fraction: float) -> float:
    """The consistency term's weight factor at ``progress`` in [0, 1] of training: the sigmoid-shaped ramp
    exp(-5 (1 - t)^2), t = min(1, progress / ``rampup_fraction``), of Laine & Aila (2017) and Tarvainen & Valpola
    (2017), used by UA-MT: exp(-5) at the start, 1 from the ramp's end on; 1 throughout without a ramp (fraction 0)."""
    if not rampup_fraction >= 0:
        raise ValueError(f"rampup_fraction must be >= 0, got {rampup_fraction}")
    if rampup_fraction == 0:
        return 1.0
    t = min(1.0, max(0.0, float(progress)) / rampup_fraction)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(
    student_logits: torch.Tensor, teacher_probabilities: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean teacher's consistency: squared difference between softmax(``student_logits``) and the teacher's
    probabilities (both (B, C, *spatial)), averaged over the classes and over the voxels, or with ``mask``
    (B, *spatial; bool or weights >= 0, e.g. UA-MT's low-uncertainty voxels) over the voxels it selects (none: 0,
    not NaN). No gradient reaches the teacher's side. Taken in float32."""
    import torch

    if student_logits.shape != teacher_probabilities.shape or student_logits.ndim < 3:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher probabilities "
            f"{tuple(teacher_probabilities.shape)} must be the same (B, C, *spatial)"
        )
    student = torch.softmax(student_logits.float(), dim=1)
    per_voxel = (student - teacher_probabilities.detach().float()).pow(2).mean(1)
    if mask is None:
        return per_voxel.mean()
    if mask.shape != per_voxel.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, *spatial) = {tuple(per_voxel.shape)}")
    weights = mask.float()
    if bool((weights < 0).any()):
        raise ValueError("mask weights must be non-negative")
    return (per_voxel * weights).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


def copy_paste_mix(
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabelled: torch.Tensor,
    pseudo: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional copy-paste (Bai et al. 2023): one mixed patch per unlabelled patch, and its target.

    ``images`` (B, C, *spatial) with ``labels`` (B, *spatial), ``unlabelled`` (U, C, *spatial) with the teacher's
    ``pseudo`` labels (U, *spatial); unlabelled patch j is paired with labelled patch j mod B. A box of
    round(``fraction`` x side) voxels per axis (at least 1), at a uniformly random place drawn from ``generator``
    (CPU), is pasted: for even j the labelled box into the unlabelled patch, for odd j the unlabelled box into the
    labelled patch, so both directions appear. The target takes the pasted box's labels inside it and the
    surrounding patch's outside. Returns (mixed (U, C, *spatial), target (U, *spatial) in ``labels``' dtype)."""
    import torch

    if images.ndim != unlabelled.ndim or images.shape[1:] != unlabelled.shape[1:] or images.ndim < 3:
        raise ValueError(f"labelled {tuple(images.shape)} and unlabelled {tuple(unlabelled.shape)} patches differ")
    if labels.shape != (images.shape[0], *images.shape[2:]) or pseudo.shape != (unlabelled.shape[0], *images.shape[2:]):
        raise ValueError(f"labels {tuple(labels.shape)} / pseudo-labels {tuple(pseudo.shape)} do not fit the patches")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"copy_paste_fraction must be in [0, 1], got {fraction}")
    spatial = images.shape[2:]
    n_labelled = images.shape[0]
    mixed, targets = [], []
    for j in range(unlabelled.shape[0]):
        i = j % n_labelled
        box = []
        for side in spatial:
            size = min(side, max(1, round(fraction * side)))
            start = int(torch.randint(0, side - size + 1, (1,), generator=generator))
            box.append(slice(start, start + size))
        inside = torch.zeros(spatial, dtype=torch.bool, device=images.device)
        inside[tuple(box)] = True
        if j % 2 == 0:  # the labelled box into the unlabelled patch
            (img_in, lab_in), (img_out, lab_out) = (images[i], labels[i]), (unlabelled[j], pseudo[j])
        else:  # the unlabelled box into the labelled patch
            (img_in, lab_in), (img_out, lab_out) = (unlabelled[j], pseudo[j]), (images[i], labels[i])
        mixed.append(torch.where(inside, img_in, img_out))
        targets.append(torch.where(inside, lab_in.to(labels.dtype), lab_out.to(labels.dtype)))
    return torch.stack(mixed), torch.stack(targets)


def masked_pseudo_labels(probabilities: np.ndarray, options: SemiSupervisedOptions) -> tuple[np.ndarray, float]:
    """A teacher's pseudo-label map for a student, and the share of voxels kept: the argmax of ``probabilities``
    ((n_classes, z, y, x), :func:`pseudo_labels` with ``mask`` weighting at ``options.confidence_threshold``),
    :data:`IGNORE_LABEL` where the teacher's confidence falls below the threshold. ``uint8``; fewer than 255
    classes."""
    if probabilities.shape[0] >= IGNORE_LABEL:
        raise ValueError(f"{probabilities.shape[0]} classes: pseudo-labels keep {IGNORE_LABEL} for masked voxels")
    labels, weights = pseudo_labels(probabilities, replace(options, weighting="mask"))
    labels = np.where(weights > 0, labels, IGNORE_LABEL).astype(np.uint8)
    return labels, float(np.mean(weights > 0)) if weights.size else 0.0


class StudentCase(NamedTuple):
    """A case a student reads: ``source`` is :data:`LABELLED` (its own labels) or the Path of its pseudo-labels."""

    case: str
    source: str | Path


def student_training_inputs(
    fold: int,
    labelled_train_cases: Sequence[str],
    pseudo_label_paths_by_teacher_fold: Mapping[int, Mapping[str, str | os.PathLike]],
    *,
    run_labelled_cases: Collection[str] = (),
) -> list[StudentCase]:
    """What student fold ``fold`` trains on: the labelled training cases of that fold (in the order given), then
    the cases pseudo-labelled by teacher fold ``fold`` ONLY (sorted by case), never another teacher's: the teachers
    of the other folds were trained on this fold's validation cases, so their pseudo-labels would carry them in.

    ``pseudo_label_paths_by_teacher_fold``: teacher fold -> {case: pseudo-label file}. ``run_labelled_cases``: every
    labelled case of the run (all folds' training and validation cases, the test cases), checked together with
    ``labelled_train_cases``. Refused (ValueError): a teacher fold ``fold`` with no pseudo-labels, and any
    pseudo-labelled case (of any teacher) that is also a labelled case: a labelled scan is never pseudo-labelled."""
    fold = int(fold)
    if len(set(labelled_train_cases)) != len(labelled_train_cases):
        raise ValueError(f"labelled training cases of fold {fold} repeat a case")
    teachers = {int(k): v for k, v in pseudo_label_paths_by_teacher_fold.items()}
    if not teachers.get(fold):
        have = sorted(k for k, v in teachers.items() if v)
        raise ValueError(
            f"teacher fold {fold} has no pseudo-labels (teacher folds with some: {have}); student fold {fold} may "
            "learn only from its own teacher's, so that no validation case leaks in"
        )
    labelled = set(labelled_train_cases) | set(run_labelled_cases)
    for teacher, paths in sorted(teachers.items()):
        overlap = sorted(labelled & set(paths))
        if overlap:
            raise ValueError(f"cases both labelled and pseudo-labelled (teacher fold {teacher}): {overlap[:10]}")
    own = teachers[fold]
    return [StudentCase(str(c), LABELLED) for c in labelled_train_cases] + [
        StudentCase(str(c), Path(own[c])) for c in sorted(own)
    ]
