"""Training of one fold: a fixed number of iterations, Dice + cross-entropy with deep supervision, resumable.

``train_fold`` writes into ``out_dir``: ``model.pt`` (final weights, :func:`carve.training.network.save_model`),
``checkpoint.pt`` (model, optimiser, progress and random states; written every ``checkpoint_every_min`` and at
the end; a fold that finds one resumes from it), ``curves.tsv`` and ``curves.png``.

The pipeline always trains a number of iterations: ``iterations``, or ``epochs`` x ``iterations_per_epoch``; a
time budget is turned into a count once, when the run is planned (:mod:`carve.training.budget`). The learning-rate
schedule runs over those iterations (progress = iteration / total), so two runs with the same seed give identical
weights on the CPU, and a fold killed and resumed gives the weights of an uninterrupted one. Only a direct call with
``time_budget_min`` alone (benchmarks, notebooks) trains to the wall clock: progress = elapsed / budget, its decay
ending when the budget is spent, and the weights depend on the machine's speed at that moment.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from carve.training.augment import AugmentConfig, augment_batch, spatial_margin
from carve.training.network import NetworkConfig, UNet3D, atomic_torch_save, load_payload, save_model
from carve.training.precision import autocast, memory_format
from carve.training.sampling import PatchSampler
from carve.training.semi_supervised import IGNORE_LABEL
from carve.training.validation import dice_per_label, predict_volume  # noqa: F401 (re-exported: benchmarks, tests)
from carve.training.validation import validate_cases as _validate
from carve.training.validation import write_curves as _write_curves  # looked up at call time: tests patch it here

if TYPE_CHECKING:
    from carve.training.multidomain import DomainSetup
    from carve.training.semi_supervised import SemiSupervisedOptions

LOG = logging.getLogger("carve.training.train")
CHECKPOINT_VERSION = 1
LOG_EVERY_S = 30.0
# Fields that may change between a killed run and its resumption. Not the count of iterations (``iterations``,
# ``epochs``): the schedule runs over it, so another count is another training, started afresh.
RESUMABLE_CHANGES = ("time_budget_min", "checkpoint_every_min")


@dataclass(frozen=True)
class TrainConfig:
    """One fold's recipe. Defaults are for few subjects on a 2-core CPU (~130 GFLOP/s):

    a 16-128 channel U-Net on 32x48x32 patches, batch 4, costs 63 GFLOP per iteration (3x the forward pass,
    ``carve.training.network.forward_flops``), about 0.5 s here, so 5 minutes buy ~600 iterations. In that regime
    AdamW at 1e-2 with a short warm-up and cosine decay to zero learned clearly faster than 3e-3 (hippocampus
    fold 0 at 200 iterations: mean Dice 0.853 vs 0.839; synthetic demo at 150: 0.74 vs 0.57), deep supervision
    was essential (0.42 without), and augmentation is kept mild (spatial p=0.2, no mirroring: it swaps
    lateralised or anterior/posterior labels) because the budget is too short to fit heavy augmentation.
    """

    iterations: int | None = None  # total; decides alone when set
    epochs: int | None = None  # else epochs x iterations_per_epoch
    time_budget_min: float | None = 5.0  # wall clock; only where neither is set (carve.training.budget converts it)
    iterations_per_epoch: int = 50
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (32, 48, 32)
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_fraction: float = 0.02
    foreground_fraction: float = 0.5
    deep_supervision: bool = True
    seed: int = 0
    checkpoint_every_min: float = 1.0
    pretrained: str | None = None
    freeze_encoder: bool = False
    pretrained_lr_scale: float = 0.1
    val_time_fraction: float = 0.1  # validation is skipped at epoch ends once it costs more than this
    deterministic: bool = True  # CUDA: deterministic kernels (CPU training is deterministic regardless)
    precision: str = "fp32"  # fp32 or bf16 autocast of the forward pass (resolved from `auto` by the plan)
    channels_last: bool = False  # model and batches in torch.channels_last_3d (chosen by `auto` where it pays)
    contrastive_weight: float = (
        0.0  # several datasets: multi-scale contrastive regulariser (carve.training.multidomain)
    )
    contrastive_temperature: float = 0.1
    adjacency_weight: float = 0.0  # several datasets: non-adjacency anatomical prior (carve.training.multidomain)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        if self.iterations is None and self.epochs is None and self.time_budget_min is None:
            raise ValueError("TrainConfig needs iterations, epochs, time_budget_min or both of the last two")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"TrainConfig.iterations must be positive, got {self.iterations}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(
                f"TrainConfig.precision must be fp32 or bf16 (auto is resolved when planned), got {self.precision}"
            )
        if self.optimizer not in ("adamw", "sgd") or self.schedule not in ("cosine", "poly"):
            raise ValueError(f"optimizer must be adamw|sgd and schedule cosine|poly: {self.optimizer}, {self.schedule}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        stride = self.network.total_stride
        if any(p % s for p, s in zip(self.patch_size, stride, strict=True)):
            raise ValueError(f"patch_size {self.patch_size} must be divisible by the network stride {stride}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        return json.loads(json.dumps(d))  # tuples -> lists: primitives only

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d["augment"].items()}
        return cls(**{**d, "augment": AugmentConfig(**aug), "network": NetworkConfig.from_dict(d["network"])})


def configure_determinism(device: str, deterministic: bool) -> None:
    """Deterministic CUDA kernels (cuDNN without autotuning, cuBLAS with a fixed workspace) or the fastest ones.

    On CPU carve's training is bit-reproducible either way (tested); on CUDA only with ``deterministic``.
    ``warn_only``: an op without a deterministic CUDA kernel warns in the log instead of stopping training.
    """
    import os

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA op
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and str(device).startswith("cuda")


def lr_factor(progress: float, schedule: str, warmup_fraction: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1]: linear warm-up, then cosine or poly(0.9) to 0."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup_fraction:
        return (p + 1e-3) / (warmup_fraction + 1e-3)
    q = (p - warmup_fraction) / max(1.0 - warmup_fraction, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * q)) if schedule == "cosine" else (1 - q) ** 0.9


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - soft batch Dice over the foreground classes); ``target`` is (soft) one-hot."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, 1)[:, 1:]
    dims = (0, *range(2, logits.ndim))
    inter = (probs * target[:, 1:]).sum(dims)
    denom = probs.sum(dims) + target[:, 1:].sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + 1 - dice.mean()


def masked_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`dice_ce_loss` over the valid voxels only: ``target`` (B, C, ...) is the one-hot (or pooled) target
    times ``weight`` (B, 1, ..., the share of valid voxels, in [0, 1]); the cross-entropy is averaged over the
    weights, the soft Dice takes the probabilities times the weights. All weights 1: the plain loss's value."""
    logits = logits.float()
    log_p = torch.log_softmax(logits, 1)
    ce = -(target * log_p).sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)
    probs = torch.softmax(logits, 1)[:, 1:] * weight
    dims = (0, *range(2, logits.ndim))
    inter = (probs * target[:, 1:]).sum(dims)
    denom = probs.sum(dims) + target[:, 1:].sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + 1 - dice.mean()


def deep_supervision_loss(
    outputs: list[torch.Tensor], labels: torch.Tensor, n_classes: int, strides, annotated: torch.Tensor | None = None
) -> torch.Tensor:
    """Weights halving per scale (the coarsest output gets none, as in nnU-Net), targets = pooled one-hot.

    With ``annotated`` (B, K) bool (several datasets) each sample's loss is marginal over the classes its
    dataset does not annotate (:func:`carve.training.multidomain.marginal_dice_ce`).

    Voxels labelled :data:`carve.training.semi_supervised.IGNORE_LABEL` (a pseudo-label the teacher was not sure of)
    add nothing: where a batch holds any, each scale's loss is :func:`masked_dice_ce_loss` over the share of
    valid voxels (pooled with the targets); a batch without any takes the plain loss, to the byte."""
    ignore = labels == IGNORE_LABEL
    valid = None
    if bool(ignore.any()):
        if annotated is not None:
            raise ValueError("pseudo-labels with masked voxels cannot be combined with several datasets")
        valid = (~ignore).float()[:, None]
        labels = torch.where(ignore, torch.zeros_like(labels), labels)
    onehot = F.one_hot(labels, n_classes).permute(0, 4, 1, 2, 3).float()
    if valid is not None:
        onehot = onehot * valid
    weights = np.array([0.5**i for i in range(len(outputs))])
    if len(outputs) > 1:
        weights[-1] = 0
    weights /= weights.sum()
    total, pool = 0.0, np.ones(3, dtype=int)
    for i, (out, w) in enumerate(zip(outputs, weights, strict=True)):
        if i:
            pool = pool * np.asarray(strides[i])
        if w == 0:
            continue
        target = onehot if i == 0 else F.avg_pool3d(onehot, tuple(int(p) for p in pool))
        if valid is not None:
            weight = valid if i == 0 else F.avg_pool3d(valid, tuple(int(p) for p in pool))
            total = total + float(w) * masked_dice_ce_loss(out, target, weight)
        elif annotated is None:
            total = total + float(w) * dice_ce_loss(out, target)
        else:
            from carve.training.multidomain import marginal_dice_ce

            total = total + float(w) * marginal_dice_ce(out, target, annotated)
    return total  # type: ignore[return-value]


def _load_pretrained(model: UNet3D, path: str, log: logging.Logger) -> set[str]:
    state = load_payload(path).get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"pretrained model file {path} holds no state_dict")
    own = model.state_dict()
    loaded = {k for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    log.info("pretrained %s: %d of %d tensors loaded", path, len(loaded), len(own))
    return loaded


def _build_optimizer(model: UNet3D, config: TrainConfig, log: logging.Logger) -> torch.optim.Optimizer:
    loaded = _load_pretrained(model, config.pretrained, log) if config.pretrained else set()
    scaled, plain = [], []
    for name, param in model.named_parameters():
        if config.freeze_encoder and name in loaded and name.startswith("encoder."):
            param.requires_grad_(False)
        elif name in loaded:
            scaled.append(param)
        else:
            plain.append(param)
    groups = [{"params": plain, "base_lr": config.learning_rate}]
    if scaled:
        groups.append({"params": scaled, "base_lr": config.learning_rate * config.pretrained_lr_scale})
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.learning_rate, momentum=0.99, nesterov=True, weight_decay=config.weight_decay
    )


def _compatible(saved: dict, config: TrainConfig) -> bool:
    now = config.to_dict()
    return all(saved.get(k) == now[k] for k in now if k not in RESUMABLE_CHANGES)


def total_iterations(config: TrainConfig) -> int | None:
    """The iterations a fold trains: ``iterations``, else ``epochs`` x ``iterations_per_epoch``; None: only a time
    budget (wall clock)."""
    if config.iterations is not None:
        return int(config.iterations)
    return config.epochs * config.iterations_per_epoch if config.epochs else None


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    network: NetworkConfig,
    generator: torch.Generator,
    device: str,
    masks: torch.Tensor | None = None,
    regulariser: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float | None:
    """One iteration on a sampled batch: augmentation, forward pass (bf16 autocast where ``config.precision`` says
    so; :mod:`carve.training.precision`), deep-supervision loss in float32
    (``masks``: the classes each sample's dataset annotates; ``regulariser``: extra terms on the finest logits),
    backward pass, gradient clipping and the optimiser's step. Returns the loss, or None (no step) when it is not
    finite. The timing of a run's budget (:mod:`carve.training.budget`) runs exactly this."""
    x, y = _augmented(images, labels, config, generator, device)
    x = x.contiguous(memory_format=memory_format(config.channels_last))
    with autocast(device, config.precision):
        out = model(x)
    outputs = [o.float() for o in out] if isinstance(out, list) else [out.float()]
    loss = deep_supervision_loss(outputs, y, network.n_classes, network.strides, masks)
    if regulariser is not None:
        loss = loss + regulariser(outputs[0])
    if not _optimiser_step(model, optimizer, loss):
        return None
    return float(loss.detach())


def _augmented(images: np.ndarray, labels: np.ndarray, config: TrainConfig, generator, device: str):
    """A sampled batch on ``device``, augmented (:func:`carve.training.augment.augment_batch`)."""
    return augment_batch(
        torch.from_numpy(images).to(device),
        torch.from_numpy(labels).to(device),
        config.augment,
        config.patch_size,
        config.spacing_mm,
        generator,
    )


def _optimiser_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """Backward pass, gradient clipping and the optimiser's step; False (no step) for a loss that is not finite."""
    if not torch.isfinite(loss):
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
    optimizer.step()
    return True


def mean_teacher_step(
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    unlabelled: np.ndarray,
    config: TrainConfig,
    network: NetworkConfig,
    generator: torch.Generator,
    device: str,
    semi: SemiSupervisedOptions,
    progress: float,
    step_index: int,
) -> tuple[float, float] | None:
    """One mean-teacher iteration (Tarvainen & Valpola 2017, as UA-MT uses it for 3D segmentation): the labelled
    batch and the ``unlabelled`` patches (U, C, *crop) are augmented alike; each unlabelled patch is seen twice,
    with independent Gaussian noise (``semi.noise_std``, clipped at 2 SD): by the network, in the same forward pass
    as the labelled batch, and by the ``teacher`` (no gradient). The loss is the labelled batch's deep-supervision
    loss plus ``semi.consistency_weight`` x :func:`carve.training.semi_supervised.consistency_rampup` (at
    ``progress``) x the squared softmax difference on the unlabelled patches, in float32. After the optimiser's
    step the teacher becomes an exponential moving average of the network, with decay
    min(``semi.ema_decay``, 1 - 1/(``step_index`` + 1)) so that it follows quickly at first. With
    ``semi.copy_paste`` the network's view of each unlabelled patch is mixed with a labelled patch
    (:func:`carve.training.semi_supervised.copy_paste_mix`, the teacher's argmax as the unlabelled part's target)
    and the mix's deep-supervision loss takes the consistency term's place and weight. Returns (loss, that
    unsupervised term), or None (no step, the teacher unchanged) when the loss is not finite."""
    from carve.training.semi_supervised import consistency_loss, consistency_rampup, copy_paste_mix, ema_update_

    x, y = _augmented(images, labels, config, generator, device)
    no_labels = np.zeros((unlabelled.shape[0], *unlabelled.shape[2:]), dtype=np.uint8)
    u, _ = _augmented(unlabelled, no_labels, config, generator, device)
    bound = 2.0 * semi.noise_std

    def noisy() -> torch.Tensor:
        noise = torch.randn(u.shape, generator=generator).mul_(semi.noise_std).clamp_(-bound, bound)
        return u + noise.to(device)

    fmt = memory_format(config.channels_last)
    student_view, teacher_view = noisy(), noisy()
    teacher.eval()
    with torch.no_grad(), autocast(device, config.precision):
        reference = teacher(teacher_view.contiguous(memory_format=fmt))
    reference = reference[0] if isinstance(reference, list) else reference
    teacher_probabilities = torch.softmax(reference.float(), 1)
    if semi.copy_paste:
        pseudo = teacher_probabilities.argmax(1)
        student_view, mixed_target = copy_paste_mix(x, y, student_view, pseudo, semi.copy_paste_fraction, generator)
    batch = torch.cat([x, student_view]).contiguous(memory_format=fmt)
    with autocast(device, config.precision):
        out = model(batch)
    outputs = [o.float() for o in out] if isinstance(out, list) else [out.float()]
    n = x.shape[0]
    supervised = deep_supervision_loss([o[:n] for o in outputs], y, network.n_classes, network.strides)
    if semi.copy_paste:
        unsupervised = deep_supervision_loss([o[n:] for o in outputs], mixed_target, network.n_classes, network.strides)
    else:
        unsupervised = consistency_loss(outputs[0][n:], teacher_probabilities)
    loss = supervised + semi.consistency_weight * consistency_rampup(progress, semi.rampup_fraction) * unsupervised
    if not _optimiser_step(model, optimizer, loss):
        return None
    ema_update_(teacher, model, min(semi.ema_decay, 1.0 - 1.0 / (step_index + 1)))
    return float(loss.detach()), float(unsupervised.detach())


def mixed_batch(
    labelled: PatchSampler, pseudo: PatchSampler, batch_size: int, pseudo_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``batch_size`` patches, ``batch_size x pseudo_fraction`` of them (rounded at random, so that the
    expectation is exact; the draw from ``pseudo``'s generator) from the pseudo-labelled cases, last."""
    expected = batch_size * pseudo_fraction
    n_pseudo = int(np.floor(expected + pseudo.rng.random())) if expected % 1 else int(expected)
    parts = [s.sample(n) for s, n in ((labelled, batch_size - n_pseudo), (pseudo, n_pseudo)) if n > 0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _domain_regularisers(config, domains, contrast, logits, *, masks, sampler, device) -> torch.Tensor:
    """The optional multi-dataset terms: contrastive (by dataset) and non-adjacency prior."""
    from carve.training.multidomain import adjacency_penalty

    extra = logits.new_zeros((), dtype=torch.float32)
    if contrast is not None:
        groups = torch.from_numpy(sampler.last_datasets).to(device)
        extra = extra + config.contrastive_weight * contrast.loss(groups, config.contrastive_temperature)
    if config.adjacency_weight > 0 and domains.forbidden:
        extra = extra + config.adjacency_weight * adjacency_penalty(logits, domains.forbidden, masks)
    return extra


def train_fold(
    train_cases: Sequence[tuple[np.ndarray, np.ndarray]],
    val_cases: Sequence[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    out_dir: Path,
    *,
    device: str = "cpu",
    threads: int = 1,
    log: logging.Logger = LOG,
    domains: DomainSetup | None = None,
    unlabelled: Sequence[np.ndarray] = (),
    semi: SemiSupervisedOptions | None = None,
    pseudo_cases: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> Path:
    """Train one fold (see module docstring); returns the path of ``model.pt``. ``domains``: the datasets of
    the cases when one network learns several (balanced sampling, marginal loss, optional regularisers).

    With ``semi`` of method ``mean_teacher`` every step also reads ``semi.unlabelled_per_batch`` patches of the
    ``unlabelled`` images ((C, z, y, x) each; :func:`mean_teacher_step`); the teacher (the network's exponential
    moving average) is then the model validated and saved, and ``model.pt`` records both its and the network's
    final validation Dice (``semi_supervised``). With method ``self_training`` (a student) ``pseudo_cases`` are
    (image, pseudo-label) pairs whose masked voxels hold :data:`carve.training.semi_supervised.IGNORE_LABEL`; a share
    ``semi.pseudo_fraction`` of every batch is drawn from them (the batch size stays the plan's, so an iteration
    costs what a supervised one does)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    configure_determinism(device, config.deterministic)
    net_cfg = replace(config.network, deep_supervision=config.deep_supervision)
    n_classes = net_cfg.n_classes
    for i, (img, lab) in enumerate([*train_cases, *val_cases]):
        if img.ndim != 4 or img.shape[0] != net_cfg.in_channels or lab.shape != img.shape[1:]:
            raise ValueError(
                f"case {i}: image {img.shape} / label {lab.shape} do not fit (C={net_cfg.in_channels}, z, y, x)"
            )
        if lab.max(initial=0) >= n_classes:
            raise ValueError(f"case {i}: label value {int(lab.max())} >= n_classes {n_classes}")
    mean_teacher = semi is not None and semi.method == "mean_teacher"
    self_training = semi is not None and semi.method == "self_training"
    if self_training and not pseudo_cases:
        raise ValueError("semi_supervised.method self_training: a student needs pseudo-labelled images")
    for i, (img, lab) in enumerate(pseudo_cases if self_training else ()):
        if img.ndim != 4 or img.shape[0] != net_cfg.in_channels or lab.shape != img.shape[1:]:
            raise ValueError(f"pseudo-labelled image {i}: image {img.shape} / pseudo-label {lab.shape} do not fit")
        values = np.unique(lab)
        if ((values >= n_classes) & (values != IGNORE_LABEL)).any():
            raise ValueError(f"pseudo-labelled image {i}: label values {values.tolist()} beyond {n_classes} classes")
    if mean_teacher and not unlabelled:
        raise ValueError("semi_supervised.method mean_teacher needs unlabelled images")
    for i, img in enumerate(unlabelled if mean_teacher else ()):
        if img.ndim != 4 or img.shape[0] != net_cfg.in_channels:
            raise ValueError(f"unlabelled image {i}: shape {img.shape} does not fit (C={net_cfg.in_channels}, z, y, x)")
    torch.manual_seed(config.seed)
    model = UNet3D(net_cfg).to(device, memory_format=memory_format(config.channels_last))
    optimizer = _build_optimizer(model, config, log)
    margin = spatial_margin(config.augment, config.patch_size, config.spacing_mm)
    crop_size = tuple(p + 2 * m for p, m in zip(config.patch_size, margin, strict=True))
    sampler_rng = np.random.default_rng([config.seed, 1])
    contrast, val_classes = None, None
    if domains is None:
        sampler = PatchSampler(train_cases, crop_size, n_classes, config.foreground_fraction, sampler_rng)
    else:
        from carve.training.multidomain import BalancedSampler, MultiScaleContrast

        sampler = BalancedSampler(
            train_cases, domains.train_datasets, crop_size, n_classes, config.foreground_fraction, sampler_rng
        )
        val_classes = [np.flatnonzero(domains.annotated[d]).tolist() for d in domains.val_datasets]
        if config.contrastive_weight > 0 and len(set(domains.train_datasets)) > 1:  # groups to contrast
            contrast = MultiScaleContrast(net_cfg.channels).to(device)
            contrast.attach(model.encoder)
            optimizer.add_param_group({"params": list(contrast.parameters()), "base_lr": config.learning_rate})
        log.info(
            "datasets %s: %s training cases; forbidden neighbours %s",
            list(domains.names),
            np.bincount(domains.train_datasets, minlength=len(domains.names)).tolist(),
            list(domains.forbidden),
        )
    aug_gen = torch.Generator().manual_seed(config.seed + 2)
    teacher, u_sampler = None, None
    if mean_teacher:
        teacher = copy.deepcopy(model).requires_grad_(False)
        no_labels = np.zeros((), dtype=np.uint8)  # a view of one zero: patches drawn uniformly, no memory
        u_sampler = PatchSampler(
            [(img, np.broadcast_to(no_labels, img.shape[1:])) for img in unlabelled],
            crop_size,
            n_classes,
            0.0,
            np.random.default_rng([config.seed, 3]),
        )
        log.info(
            "mean teacher: %d unlabelled image(s), %d unlabelled patch(es) per batch, EMA decay %g, %s %g "
            "ramped over %g of training",
            len(unlabelled),
            semi.unlabelled_per_batch,
            semi.ema_decay,
            f"copy-paste (box {semi.copy_paste_fraction:.2f} of each side)" if semi.copy_paste else "consistency",
            semi.consistency_weight,
            semi.rampup_fraction,
        )
    pseudo_sampler = None
    if self_training:
        pseudo_sampler = PatchSampler(
            pseudo_cases, crop_size, n_classes, config.foreground_fraction, np.random.default_rng([config.seed, 4])
        )
        log.info(
            "self-training student: %d labelled, %d pseudo-labelled image(s); %.0f %% of each batch pseudo-labelled",
            len(train_cases),
            len(pseudo_cases),
            100 * semi.pseudo_fraction,
        )
    semi_json = json.dumps(asdict(semi) if mean_teacher or self_training else None, sort_keys=True)
    total_iters = total_iterations(config)
    budget_s = config.time_budget_min * 60 if config.time_budget_min and config.iterations is None else None
    iteration, epoch, elapsed_prev, val_seconds, rows = 0, 0, 0.0, 0.0, []
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = load_payload(ckpt_path)
        same_semi = ckpt.get("semi_supervised", "null") == semi_json
        same_config = ckpt.get("version") == CHECKPOINT_VERSION and _compatible(json.loads(ckpt["config"]), config)
        if not (same_config and same_semi):
            log.warning("%s was written by another configuration: starting afresh", ckpt_path)
        else:
            model.load_state_dict(ckpt["model"])
            if contrast is not None:
                contrast.load_state_dict(ckpt["contrast"])
            optimizer.load_state_dict(ckpt["optimizer"])
            iteration, epoch, elapsed_prev = int(ckpt["iteration"]), int(ckpt["epoch"]), float(ckpt["elapsed_s"])
            val_seconds, rows = float(ckpt["val_seconds"]), [list(r) for r in ckpt["rows"]]
            sampler.set_state(json.loads(ckpt["sampler_rng"]))
            aug_gen.set_state(ckpt["augment_rng"])
            if teacher is not None:
                teacher.load_state_dict(ckpt["teacher"])
                u_sampler.set_state(json.loads(ckpt["unlabelled_rng"]))
            if pseudo_sampler is not None:
                pseudo_sampler.set_state(json.loads(ckpt["pseudo_rng"]))
            log.info("resumed from %s at iteration %d (%.0f s)", ckpt_path, iteration, elapsed_prev)
    t0 = time.monotonic() - elapsed_prev

    def progress() -> float:
        fractions = [iteration / total_iters] if total_iters else []
        return max(fractions + ([(time.monotonic() - t0) / budget_s] if budget_s else []))

    def save_checkpoint() -> None:
        atomic_torch_save(
            {
                "version": CHECKPOINT_VERSION,
                "config": json.dumps(config.to_dict()),
                "model": model.state_dict(),
                "contrast": contrast.state_dict() if contrast is not None else {},
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "epoch": epoch,
                "elapsed_s": time.monotonic() - t0,
                "val_seconds": val_seconds,
                "rows": rows,
                "sampler_rng": json.dumps(sampler.state()),
                "augment_rng": aug_gen.get_state(),
                "semi_supervised": semi_json,
                "teacher": teacher.state_dict() if teacher is not None else {},
                "unlabelled_rng": json.dumps(u_sampler.state()) if u_sampler is not None else "null",
                "pseudo_rng": json.dumps(pseudo_sampler.state()) if pseudo_sampler is not None else "null",
            },
            ckpt_path,
        )

    last_log = last_ckpt = time.monotonic()
    evaluated = teacher if teacher is not None else model  # the model validated and saved
    lr, val_last_s = 0.0, 0.0
    while progress() < 1.0:
        model.train()
        losses = []
        for _ in range(config.iterations_per_epoch):
            p = progress()
            if p >= 1.0:
                break
            factor = lr_factor(p, config.schedule, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            lr = config.learning_rate * factor
            if pseudo_sampler is not None:
                images, labels = mixed_batch(sampler, pseudo_sampler, config.batch_size, semi.pseudo_fraction)
            else:
                images, labels = sampler.sample(config.batch_size)
            masks, regulariser = None, None
            if domains is not None:
                masks = domains.masks(sampler.last_datasets)
                regulariser = partial(_domain_regularisers, config, domains, contrast, masks=masks, sampler=sampler,
                                      device=device)  # fmt: skip
            if teacher is not None:
                u_images, _ = u_sampler.sample(semi.unlabelled_per_batch)
                result = mean_teacher_step(
                    model, teacher, optimizer, images, labels, u_images, config, net_cfg, aug_gen, device, semi, p,
                    iteration,
                )  # fmt: skip
                loss, consistency = result if result is not None else (None, None)
            else:
                loss = train_step(
                    model, optimizer, images, labels, config, net_cfg, aug_gen, device, masks, regulariser
                )
            if loss is None:
                log.warning("iteration %d: non-finite loss, step skipped", iteration)
                iteration += 1
                continue
            losses.append(loss)
            iteration += 1
            if time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                log.info("iteration %d loss %.4f lr %.2e elapsed %.0f s", iteration, losses[-1], lr, last_log - t0)
                if teacher is not None:
                    term = "copy-paste loss" if semi.copy_paste else "consistency"
                    log.info("iteration %d %s %.5f", iteration, term, consistency)
        if not losses:
            break
        epoch += 1
        elapsed, finished = time.monotonic() - t0, progress() >= 1.0
        dice = [float("nan")] * (n_classes - 1)
        # validate at the end, and between epochs while it is cheap and does not eat the last of the budget
        cheap = val_seconds <= config.val_time_fraction * elapsed
        room = budget_s is None or elapsed + val_last_s < budget_s
        if val_cases and (finished or (cheap and room)):
            tv = time.monotonic()
            dice = _validate(evaluated, val_cases, config.patch_size, n_classes, device, val_classes, config.precision)
            val_last_s = time.monotonic() - tv
            val_seconds += val_last_s
        rows.append([epoch, iteration, elapsed, float(np.mean(losses)), lr, *dice])
        _write_curves(out_dir, rows, n_classes)
        log.info(
            "epoch %d: iteration %d loss %.4f val Dice %s",
            epoch,
            iteration,
            rows[-1][3],
            " ".join(f"{d:.3f}" for d in dice),
        )
        if finished or time.monotonic() - last_ckpt >= config.checkpoint_every_min * 60:
            save_checkpoint()
            last_ckpt = time.monotonic()
    if val_cases and rows and np.isnan(rows[-1][5:]).all():  # the last epoch skipped validation
        rows[-1][5:] = _validate(
            evaluated, val_cases, config.patch_size, n_classes, device, val_classes, config.precision
        )
    if rows:  # always: a fold resumed from its final checkpoint (killed before model.pt) writes them too
        _write_curves(out_dir, rows, n_classes)
    if not ckpt_path.exists() or not rows or rows[-1][1] != iteration:
        save_checkpoint()
    extra = {
        "train_config": config.to_dict(),
        "iterations": iteration,
        "epochs": epoch,
        "val_dice": rows[-1][5:] if rows else [],
        "patch_size": list(config.patch_size),
        "spacing_mm": list(config.spacing_mm),
    }
    if teacher is not None:
        student = (
            _validate(model, val_cases, config.patch_size, n_classes, device, val_classes, config.precision)
            if val_cases
            else []
        )
        extra["semi_supervised"] = {
            **asdict(semi),
            "unlabelled_images": len(unlabelled),
            "saved": "teacher",
            "teacher_val_dice": extra["val_dice"],
            "student_val_dice": student,
        }
        log.info(
            "mean teacher: final validation Dice teacher %s, network %s",
            " ".join(f"{d:.3f}" for d in extra["val_dice"]),
            " ".join(f"{d:.3f}" for d in student),
        )
    if self_training:
        extra["semi_supervised"] = {**asdict(semi), "pseudo_labelled_images": len(pseudo_cases), "saved": "network"}
    model_path = out_dir / "model.pt"
    save_model(model_path, evaluated, net_cfg, extra)
    return model_path
