"""One network over several small datasets (Boutillon et al. 2022): a union label space, a loss masked to the
labels each dataset annotates, sampling balanced across datasets, and two optional regularisers.

* **Union label space.** Each dataset names its own labels (``{value: name}`` in its own files). The run's labels
  are their union by name, numbered 1..N in the order the datasets are configured; a name shared by two datasets
  is one class. Conversion maps each case's label values into the union (:func:`union_values`). That
  bookkeeping is torch-free, in :mod:`carve.imaging.labels` (re-exported here), for the rules that run without torch.
* **Marginal loss** (partial labels; Shi et al. 2021, Fang and Yan 2020). For a sample of dataset ``d`` the
  probabilities of the classes ``d`` does not annotate are added to the background before Dice and
  cross-entropy: an unannotated structure is "not annotated", never "wrong". Prediction does the same with the
  case's dataset (:func:`restrict_probabilities`), so a case only receives its dataset's labels.
* **Balanced sampling**: every patch first draws its dataset uniformly, then a case of that dataset.
* **Multi-scale contrastive regularisation** (``train.contrastive_weight``): the features of the deepest encoder
  stages, pooled per octant of each patch, are projected and pulled together by dataset (supervised contrastive
  loss, Khosla et al. 2020), as Boutillon et al. regularise the shared representation into domain clusters.
* **Anatomical (non-adjacency) prior** (``train.adjacency_weight``; Ganaye et al. 2018): two classes of one
  dataset that never touch in its training labels are penalised where the prediction puts them side by side.

Both regularisers are off by default: docs/multidomain.md has the measurements that decided it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from carve.imaging.labels import (  # noqa: F401  (re-exported: carve.training.multidomain was their home)
    DatasetSpec,
    annotated_classes,
    class_mask,
    remap_labels,
    restrict_probabilities,
    union_label_names,
    union_values,
)
from carve.training.sampling import PatchSampler


class RestrictedModel(nn.Module):
    """A trained model's logits with the classes outside ``classes`` merged into the background (their
    log-sum-exp) and removed (a very low logit): the prediction of a case of one dataset of several."""

    def __init__(self, model: nn.Module, classes: Sequence[int]):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        n = model.config.n_classes
        self.dropped = [k for k in range(n) if k not in set(int(c) for c in classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not self.dropped:
            return logits
        logits = logits.float()
        merged = torch.logsumexp(logits[:, [0, *self.dropped]], dim=1)
        out = logits.clone()
        out[:, 0] = merged
        out[:, self.dropped] = -1e4
        return out


def marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice) with, per sample, the unannotated classes merged into the background.

    ``target`` (B, K, ...) is (soft) one-hot in the union space; ``annotated`` (B, K) bool says which classes
    each sample's dataset annotates (background always). Dice is a batch Dice per class over the samples that
    annotate it, averaged over the classes annotated by at least one sample.
    """
    logits = logits.float()
    mask = annotated.to(logits.device).bool()
    shape = (*mask.shape, *([1] * (logits.ndim - 2)))
    merged = ~mask
    merged[:, 0] = True
    log_probs = torch.log_softmax(logits, 1)
    background = torch.logsumexp(log_probs.masked_fill(~merged.view(shape), float("-inf")), dim=1, keepdim=True)
    keep = mask.clone()
    keep[:, 0] = False
    foreground = log_probs.masked_fill(~keep.view(shape), 0.0)  # unannotated channels carry no target mass
    merged_log = torch.cat([background, foreground[:, 1:]], dim=1)
    ce = -(target * merged_log).sum(1).mean()
    probs = torch.exp(merged_log[:, 1:]) * keep[:, 1:].reshape(len(mask), -1, *shape[2:])
    dims = (0, *range(2, logits.ndim))
    inter = (probs * target[:, 1:]).sum(dims)
    denom = probs.sum(dims) + target[:, 1:].sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    present = keep[:, 1:].any(0)
    return ce + 1 - dice[present].mean() if bool(present.any()) else ce


def label_adjacency(labels: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """(K, K) bool: which classes touch (6-neighbourhood) in any of the label maps."""
    touch = np.zeros((n_classes, n_classes), dtype=bool)
    for lab in labels:
        for axis in range(lab.ndim):
            a = np.moveaxis(lab, axis, 0)
            pairs = np.stack([a[:-1].ravel(), a[1:].ravel()], 1)
            pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
            touch[pairs[:, 0], pairs[:, 1]] = True
            touch[pairs[:, 1], pairs[:, 0]] = True
    return touch


def forbidden_pairs(
    labels_by_dataset: Sequence[Sequence[np.ndarray]], classes_by_dataset: Sequence[Sequence[int]], n_classes: int
) -> tuple[tuple[int, int], ...]:
    """Foreground class pairs annotated together by a dataset that never touch in that dataset's labels (and
    touch in no other dataset's labels)."""
    touch = np.zeros((n_classes, n_classes), dtype=bool)
    for labels in labels_by_dataset:
        touch |= label_adjacency(labels, n_classes)
    pairs = set()
    for classes in classes_by_dataset:
        fg = sorted(c for c in classes if c)
        pairs |= {(a, b) for i, a in enumerate(fg) for b in fg[i + 1 :] if not touch[a, b]}
    return tuple(sorted(pairs))


def adjacency_penalty(logits: torch.Tensor, pairs: Sequence[tuple[int, int]], annotated: torch.Tensor) -> torch.Tensor:
    """Mean over the forbidden pairs of p_a x (3x3x3 max of p_b), over the samples annotating both classes."""
    if not pairs:
        return logits.new_zeros(())
    probs = torch.softmax(logits.float(), 1)
    near = F.max_pool3d(probs, 3, stride=1, padding=1)
    mask = annotated.to(logits.device).bool()
    terms = []
    for a, b in pairs:
        both = mask[:, a] & mask[:, b]
        if bool(both.any()):
            terms.append((probs[both, a] * near[both, b] + probs[both, b] * near[both, a]).mean())
    return torch.stack(terms).mean() if terms else logits.new_zeros(())


def supervised_contrastive(embeddings: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) of L2-normalised ``embeddings`` (B, D) with ``groups``
    (B,) as classes; anchors without a positive in the batch are left out (zero when none has one)."""
    z = F.normalize(embeddings.float(), dim=1)
    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (groups[:, None] == groups[None, :]) & ~eye
    counts = positive.sum(1)
    has = counts > 0
    if not bool(has.any()):
        return sim.new_zeros(())
    mean_pos = (log_prob * positive).sum(1)[has] / counts[has]
    return -mean_pos.mean()


class MultiScaleContrast(nn.Module):
    """Projection heads on the pooled outputs of the deepest ``scales`` encoder stages (training only)."""

    def __init__(self, channels: Sequence[int], scales: int = 3, dim: int = 32):
        super().__init__()
        self.stages = list(range(max(len(channels) - scales, 0), len(channels)))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(channels[s], 64), nn.ReLU(), nn.Linear(64, dim)) for s in self.stages
        )
        self.features: dict[int, torch.Tensor] = {}

    def attach(self, encoder: nn.ModuleList) -> list:
        """Forward hooks that keep the chosen stages' outputs; returns their handles."""

        def keep(stage: int):
            def hook(_module, _inputs, output):
                self.features[stage] = output

            return hook

        return [encoder[s].register_forward_hook(keep(s)) for s in self.stages]

    def loss(self, groups: torch.Tensor, temperature: float) -> torch.Tensor:
        """Each sample's features pooled over its 8 octants (2x2x2 regions), so that a batch of 2 still has
        positives (the sample's own other regions, same dataset) and negatives (the other dataset's regions): with
        one embedding per sample a batch of 2 makes the loss identically zero."""
        terms = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            regions = F.adaptive_avg_pool3d(self.features[stage].float(), 2).flatten(2).transpose(1, 2)  # (B, 8, C)
            embeddings = head(regions.reshape(-1, regions.shape[-1]))
            terms.append(supervised_contrastive(embeddings, groups.repeat_interleave(regions.shape[1]), temperature))
        self.features.clear()
        return torch.stack(terms).mean()


class BalancedSampler:
    """Patches of several datasets: each patch draws its dataset uniformly, then a patch of that dataset.

    One seeded generator drives all (its state is the sampler's state, as for :class:`PatchSampler`)."""

    def __init__(
        self,
        cases: Sequence[tuple[np.ndarray, np.ndarray]],
        datasets: Sequence[int],
        patch_size: Sequence[int],
        n_classes: int,
        foreground_fraction: float,
        rng: np.random.Generator,
    ):
        if len(cases) != len(datasets):
            raise ValueError(f"{len(cases)} case(s) but {len(datasets)} dataset index(es)")
        self.rng = rng
        self.datasets = sorted(set(int(d) for d in datasets))
        self.samplers = [
            PatchSampler(
                [c for c, d in zip(cases, datasets, strict=True) if d == k], patch_size, n_classes,
                foreground_fraction, rng,
            )
            for k in self.datasets
        ]  # fmt: skip
        self.last_datasets = np.zeros(0, dtype=np.int64)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.rng.integers(len(self.datasets), size=batch_size)
        images, labels = zip(*(self.samplers[int(k)].sample(1) for k in picks), strict=True)
        self.last_datasets = np.asarray([self.datasets[int(k)] for k in picks], dtype=np.int64)
        return np.concatenate(images), np.concatenate(labels)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


@dataclass(frozen=True)
class DomainSetup:
    """What training needs to know about the datasets of its cases (built by :func:`domain_setup`)."""

    names: tuple[str, ...]
    train_datasets: tuple[int, ...]  # dataset index of each training case
    val_datasets: tuple[int, ...]
    annotated: np.ndarray  # (datasets, K) bool
    forbidden: tuple[tuple[int, int], ...]

    def masks(self, datasets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.annotated[np.asarray(datasets, dtype=np.int64)])


def domain_setup(
    names: Sequence[str],
    classes: Mapping[str, Sequence[int]],
    train_cases: Sequence[tuple[np.ndarray, np.ndarray]],
    train_names: Sequence[str],
    val_names: Sequence[str],
    n_classes: int,
) -> DomainSetup:
    """``names``: every dataset; ``classes``: the union classes each annotates; ``train_names``/``val_names``:
    the dataset of each training / validation case, in order."""
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for n in [*train_names, *val_names] if n not in index})
    if unknown:
        raise ValueError(f"cases of unknown dataset(s) {unknown}; the datasets are {list(names)}")
    annotated = np.stack([class_mask(classes[n], n_classes) for n in names])
    by_dataset = [[lab for (_, lab), d in zip(train_cases, train_names, strict=True) if d == n] for n in names]
    forbidden = forbidden_pairs(by_dataset, [classes[n] for n in names], n_classes)
    return DomainSetup(
        tuple(names), tuple(index[n] for n in train_names), tuple(index[n] for n in val_names), annotated, forbidden
    )
