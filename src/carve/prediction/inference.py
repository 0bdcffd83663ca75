"""Sliding-window ensemble inference with Gaussian-weighted fusion and test-time mirroring.

An *ensemble member* is one model under one mirror combination (a subset of ``mirror_axes``; the empty
subset is the plain prediction) on one view of the image: the image itself, or one of ``projections``
(smooth invertible re-projections, :mod:`carve.prediction.projection`, whose member probabilities are mapped back before
they are counted), so ``n_members = len(models) * 2 ** len(mirror_axes) * (1 + len(projections))``. For each member
the volume is tiled with overlapping windows (:func:`window_starts`); each window's softmax is weighted by
a Gaussian importance map (:func:`gaussian_importance`, larger weight at the patch centre where the network
sees the most context) and accumulated in place; dividing by the summed weights gives the member's
probability map, which sums to 1 at every voxel. That map is folded into running statistics and
discarded, so memory stays a few ``n_classes x volume`` buffers whatever the number of members:

* ``mean_probabilities``: mean over members (the ensemble prediction);
* ``std``: per-label population standard deviation (ddof 0) across members, from Welford's running mean
  and sum of squared deviations (numerically stable: identical members give exactly 0);
* ``mean_entropy``: mean over members of each member's predictive entropy in nats, the "expected entropy"
  term of the mutual information (see :mod:`carve.prediction.uncertainty`).

Arrays follow carve's convention: volumes are ``(z, y, x)``; images ``(C, z, y, x)``; ``patch_size`` and
``mirror_axes`` refer to the spatial axes ``0, 1, 2`` = ``z, y, x``. Along an axis where the volume is
smaller than the patch, the image is padded symmetrically (with ``pad_value``, by default the per-channel
image minimum, i.e. "background" of a normalised image), predicted, and the results cropped back.
Design follows nnU-Net v2 (``compute_gaussian``, ``compute_steps_for_sliding_window``) and MONAI's
``sliding_window_inference``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from carve.training.precision import autocast, memory_format, resolved

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class EnsembleResult:
    """Streamed ensemble statistics (see module docstring); spatial arrays are ``(z, y, x)``."""

    mean_probabilities: np.ndarray  # (n_classes, z, y, x), float32 or float16
    mean_entropy: np.ndarray | None  # (z, y, x) float32, nats: mean over members of each member's entropy
    std: np.ndarray | None  # (n_classes - std_first_class, z, y, x), float32 or float16: per-label std (ddof 0)
    n_members: int
    member_labels: tuple[np.ndarray, ...] = ()  # (z, y, x) uint8 argmax of each member, with member_labels=True
    member_statistics: tuple[object, ...] = ()  # member_statistic(probabilities) of each member, when given
    # mean_entropy and std are None with uncertainty=False (the mean alone)
    std_first_class: int = 0  # std[i] is class std_first_class + i's (1: the background's is not kept)


class Projection(Protocol):
    """A re-projection of the image (see :class:`carve.prediction.projection.RadialWarp`)."""

    def project(self, image: np.ndarray) -> np.ndarray:
        """The projected ``(C, z, y, x)`` image, same shape."""
        ...

    def unproject_(self, probabilities: np.ndarray) -> None:
        """Map ``(n_classes, z, y, x)`` probabilities of the projected image back, in place."""
        ...


def _as_shape3(values: Sequence[int], name: str) -> Shape3:
    shape = tuple(int(v) for v in values)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be three positive integers (z, y, x), got {tuple(values)}")
    return shape  # type: ignore[return-value]


def gaussian_importance(
    patch_size: Sequence[int], sigma_scale: float = 1.0 / 8.0, min_value: float = 1e-4
) -> np.ndarray:
    """Separable Gaussian weight map of shape ``patch_size``, float32, maximum 1 at the patch centre.

    ``sigma`` along each axis is ``sigma_scale * patch_size[axis]`` (nnU-Net's default 1/8); values are
    clipped below at ``min_value`` (> 0) so that every voxel of a window keeps a positive weight and the
    fused result never divides by zero, also when accumulated in float16.
    """
    patch = _as_shape3(patch_size, "patch_size")
    if sigma_scale <= 0 or not 0 < min_value <= 1:
        raise ValueError(f"need sigma_scale > 0 and 0 < min_value <= 1, got {sigma_scale}, {min_value}")
    weights = np.ones(patch, dtype=np.float64)
    for axis, n in enumerate(patch):
        centre = n // 2
        sigma = sigma_scale * n
        profile = np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2)
        shape = [1, 1, 1]
        shape[axis] = n
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    return np.clip(weights, min_value, 1.0).astype(np.float32)


def _axis_starts(size: int, patch: int, overlap: float) -> list[int]:
    if size <= patch:
        return [0]
    target_step = max(1.0, patch * (1.0 - overlap))
    n_steps = int(np.ceil((size - patch) / target_step)) + 1
    step = (size - patch) / (n_steps - 1)
    return sorted({int(round(step * i)) for i in range(n_steps)})


def window_starts(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[Shape3]:
    """Start corners ``(z, y, x)`` of windows of ``patch_size`` that cover every voxel of ``shape``.

    Along each axis the windows are spread evenly from 0 to ``shape - patch`` (the last one flush with the
    far border), with a step of at most ``patch * (1 - overlap)`` voxels (at least 1). Where the volume is
    smaller than the patch there is a single start 0 and the window extends beyond the volume: the caller
    pads (:func:`sliding_window_probabilities` does).
    """
    size = _as_shape3(shape, "shape")
    patch = _as_shape3(patch_size, "patch_size")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    per_axis = [_axis_starts(s, p, overlap) for s, p in zip(size, patch, strict=True)]
    return [tuple(corner) for corner in itertools.product(*per_axis)]  # type: ignore[misc]


def _mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = tuple(sorted({int(a) for a in mirror_axes}))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror_axes are spatial axes 0, 1, 2 (z, y, x), got {tuple(mirror_axes)}")
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _pad_image(image: np.ndarray, patch: Shape3, pad_value: float | None) -> tuple[np.ndarray, tuple]:
    """Pad spatial axes up to ``patch`` symmetrically; return the padded image and the crop back."""
    spatial = image.shape[1:]
    before = [max(0, p - s) // 2 for s, p in zip(spatial, patch, strict=True)]
    after = [max(0, p - s) - b for s, p, b in zip(spatial, patch, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return image, crop
    padded_spatial = tuple(s + b + a for s, b, a in zip(spatial, before, after, strict=True))
    padded = np.empty((image.shape[0], *padded_spatial), dtype=np.float32)
    for c in range(image.shape[0]):
        padded[c] = float(image[c].min()) if pad_value is None else float(pad_value)
        padded[(c, *crop)] = image[c]
    return padded, crop


def _predict_windows(
    model: nn.Module,
    flip_dims: tuple[int, ...],
    image_t: torch.Tensor,
    starts: Sequence[Shape3],
    patch: Shape3,
    gaussian: torch.Tensor,
    out: torch.Tensor,
    weights: torch.Tensor,
    z_base: int,
    batch_windows: int,
    precision: str,
    fmt: torch.memory_format = torch.contiguous_format,
) -> None:
    """Add one member's Gaussian-weighted softmax over the windows at ``starts`` to ``out`` (n_classes, z, y, x)
    and the Gaussian to ``weights`` (z, y, x), both covering the volume from z = ``z_base`` on."""
    n_classes = out.shape[0]
    gaussian_out = gaussian.to(out.dtype)
    for first in range(0, len(starts), batch_windows):
        batch_starts = starts[first : first + batch_windows]
        slicers = [tuple(slice(s, s + p) for s, p in zip(st, patch, strict=True)) for st in batch_starts]
        batch = torch.stack([image_t[(slice(None), *sl)] for sl in slicers])
        if flip_dims:
            batch = torch.flip(batch, flip_dims)
        batch = batch.contiguous(memory_format=fmt)
        with autocast(image_t.device.type, precision):
            logits = model(batch)
        if isinstance(logits, list | tuple):  # deep supervision: full resolution first
            logits = logits[0]
        expected = (len(slicers), n_classes, *patch)
        if tuple(logits.shape) != expected:
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected {expected}")
        if flip_dims:
            logits = torch.flip(logits, flip_dims)
        probabilities = torch.softmax(logits.float(), dim=1)
        probabilities *= gaussian
        probabilities = probabilities.to(out.dtype)
        for i, (z, y, x) in enumerate(batch_starts):
            local = (slice(z - z_base, z - z_base + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            out[(slice(None), *local)] += probabilities[i]
            weights[local] += gaussian_out


def _rows(starts: Sequence[Shape3]) -> list[tuple[int, list[Shape3]]]:
    """The windows grouped by their z start, in order (``window_starts`` lists them z-major)."""
    rows: dict[int, list[Shape3]] = {}
    for start in starts:
        rows.setdefault(start[0], []).append(start)
    return sorted(rows.items())


class _Statistics:
    """Running ensemble statistics over the (padded) volume, folded in slab by slab along z: Welford's mean and
    sum of squared deviations and the entropy sum (``uncertainty``), or the mean alone."""

    def __init__(
        self, n_classes: int, volume: Shape3, uncertainty: bool, member_labels: bool, std_first_class: int = 0, **kw
    ) -> None:
        self.mean = torch.zeros((n_classes, *volume), **kw)
        self.std_first_class = std_first_class  # Welford's M2 of the classes from this one on
        self.sq_dev_sum = torch.zeros((n_classes - std_first_class, *volume), **kw) if uncertainty else None
        self.entropy_sum = torch.zeros(volume, **kw) if uncertainty else None
        self.keep_labels, self.labels = member_labels, None
        self.volume, self.n_members = volume, 0

    def start_member(self) -> None:
        self.n_members += 1
        if self.keep_labels:
            self.labels = torch.empty(self.volume, dtype=torch.uint8, device=self.mean.device)

    def fold(self, z0: int, probabilities: torch.Tensor) -> None:
        """Fold the current member's final probabilities of the slab from z = ``z0`` (consumed: overwritten)."""
        z = slice(z0, z0 + probabilities.shape[1])
        if self.labels is not None:
            self.labels[z] = probabilities.argmax(0).to(torch.uint8)
        if self.entropy_sum is not None:
            _add_entropy(probabilities, self.entropy_sum[z])
        n = self.n_members
        mean = self.mean[:, z]
        probabilities -= mean  # now delta = p - old mean
        mean.add_(probabilities, alpha=1.0 / n)
        if self.sq_dev_sum is not None:
            delta = probabilities[self.std_first_class :]
            self.sq_dev_sum[:, z].addcmul_(delta, delta, value=(n - 1) / n)  # delta * (p - new mean)

    def member_labels(self, crop: tuple) -> np.ndarray:
        return np.ascontiguousarray(self.labels[crop].cpu().numpy())


def _stream_member(
    model: nn.Module,
    flip_dims: tuple[int, ...],
    image_t: torch.Tensor,
    rows: list[tuple[int, list[Shape3]]],
    patch: Shape3,
    gaussian: torch.Tensor,
    member: torch.Tensor,
    weights: torch.Tensor,
    stats: _Statistics,
    batch_windows: int,
    precision: str,
    fmt: torch.memory_format = torch.contiguous_format,
    crop: tuple = (),
    accumulator: Any = None,
) -> None:
    """One member, row of windows by row: ``member`` and ``weights`` hold the volume from z = ``base`` on, one
    patch deep; after each row the voxels before the next row's start are final: divided by their summed
    weights, given to ``accumulator`` (its part inside the image's ``crop``) and folded into ``stats``, and the
    buffers move on."""
    depth = image_t.shape[1]
    base = rows[0][0]
    member.zero_()
    weights.zero_()
    for i, (z, row) in enumerate(rows):
        if z > base:  # [base, z) is folded: keep the rest at the front
            shift, keep = z - base, member.shape[1] - (z - base)
            member[:, :keep] = member[:, shift:].clone()
            member[:, keep:] = 0
            weights[:keep] = weights[shift:].clone()
            weights[keep:] = 0
            base = z
        _predict_windows(
            model, flip_dims, image_t, row, patch, gaussian, member, weights, base, batch_windows, precision, fmt
        )
        final = (rows[i + 1][0] if i + 1 < len(rows) else depth) - base
        slab = member[:, :final]
        slab /= weights[:final]
        if accumulator is not None:
            lo, hi = max(base, crop[0].start), min(base + final, crop[0].stop)
            if lo < hi:
                accumulator.add(slab[:, lo - base : hi - base, crop[1], crop[2]].cpu().numpy())
        stats.fold(base, slab)


def _add_entropy(member: torch.Tensor, entropy_sum: torch.Tensor, slab_voxels: int = 1 << 22) -> None:
    """``entropy_sum += sum_c entr(member[c])``, slab by slab along z so that temporaries stay small."""
    step = max(1, slab_voxels // max(1, member.shape[2] * member.shape[3]))
    for z0 in range(0, member.shape[1], step):
        part = entropy_sum[z0 : z0 + step]
        for c in range(member.shape[0]):
            part += torch.special.entr(member[c, z0 : z0 + step])


def _unproject(view: Projection, member: torch.Tensor, crop: tuple) -> None:
    """Map one member's probabilities (the image's part of the padded volume) back through ``view``."""
    region = member[(slice(None), *crop)]
    if region.device.type == "cpu" and region.dtype == torch.float32:
        view.unproject_(region.numpy())  # shares memory with the tensor
        return
    values = region.float().cpu().numpy()
    view.unproject_(values)
    region.copy_(torch.from_numpy(values))


@torch.inference_mode()
def sliding_window_probabilities(
    models: Sequence[nn.Module],
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    n_classes: int,
    overlap: float = 0.5,
    mirror_axes: tuple[int, ...] = (),
    batch_windows: int = 4,
    device: str | torch.device = "cpu",
    accumulate_dtype: torch.dtype = torch.float32,
    precision: str = "fp32",
    half_precision_output: bool = False,
    pad_value: float | None = None,
    sigma_scale: float = 1.0 / 8.0,
    projections: Sequence[Projection] = (),
    member_labels: bool = False,
    member_statistic: Callable[[np.ndarray], object] | None = None,
    uncertainty: bool = True,
    member_accumulator: Callable[[], Any] | None = None,
    channels_last: bool = False,
    foreground_std_only: bool = False,
) -> EnsembleResult:
    """Ensemble probabilities and uncertainty statistics of ``models`` over ``image`` (C, z, y, x).

    Every model is moved to ``device`` once and put in eval mode; windows run in batches of ``batch_windows`` under
    ``torch.inference_mode()``, the forward pass in ``precision`` (``fp32``, or ``bf16``: autocast on the CPU or CUDA,
    :mod:`carve.prediction.inference_precision`); softmax is always taken in float32. Accumulators live on ``device`` in
    ``accumulate_dtype``. ``half_precision_output`` returns ``mean_probabilities`` and ``std`` as float16 to bound
    memory. ``pad_value=None`` pads small volumes with each channel's minimum. Every projection in ``projections`` adds
    a view of the image: it is projected once, every model and mirroring predicts it, and each member's probabilities
    are unprojected before they join the statistics. See the module docstring for the definitions of the returned
    statistics. With ``member_labels`` each member's argmax label map (uint8, one volume per member) is kept too, for
    the agreement between members (:func:`carve.evaluation.failure.pairwise_member_dice`). ``member_statistic``, when
    given, is called with each member's ``(n_classes, z, y, x)`` probabilities (cropped to the image, after
    unprojection; a view of the member buffer, valid only during the call) and its results are returned in order, for
    scores that need each member's own probabilities (:func:`carve.evaluation.failure.predicted_dice` per member).

    ``uncertainty=False`` keeps the mean alone (``std`` and ``mean_entropy`` are None). ``foreground_std_only``
    keeps the std of classes 1.. only (``std_first_class`` 1), for a caller that never reads the background's:
    one ``volume`` less in ``accumulate_dtype``.

    ``channels_last``: models and window batches in the ``torch.channels_last_3d`` memory format (the same
    arithmetic, another layout; rule ``choose_inference_precision`` decides where it is faster).

    ``member_accumulator`` (in place of ``member_statistic``, for a statistic that adds over voxels) makes one
    accumulator per member, gives it that member's final probabilities part by part (``add``, slabs of the image's
    region in any order) and returns its ``result()`` in ``member_statistics``: the members can then be streamed
    (:class:`carve.evaluation.failure.PredictedDiceSums`).

    Memory beyond the image, in ``accumulate_dtype``: the running mean (``n_classes x volume``), with
    ``uncertainty`` also the running sum of squared deviations (``n_classes x volume``, one volume less with
    ``foreground_std_only``) and the entropy sum (one volume); and the member being predicted with its summed
    window weights, one patch deep along z (each row of windows is folded in as soon as the next row starts beyond
    it) or, with projections or a ``member_statistic``, the whole volume; with projections also one projected copy
    of the image and one float32 volume while a member is unprojected.
    """
    if not models:
        raise ValueError("sliding_window_probabilities needs at least one model")
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, z, y, x), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2 (background + one label), got {n_classes}")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    patch = _as_shape3(patch_size, "patch_size")
    precision = resolved(precision)
    combos = _mirror_combinations(mirror_axes)
    device = torch.device(device)

    image = image.astype(np.float32, copy=False)
    volume = tuple(max(s, p) for s, p in zip(image.shape[1:], patch, strict=True))
    starts = window_starts(volume, patch, overlap)
    gaussian = torch.from_numpy(gaussian_importance(patch, sigma_scale)).to(device)

    # Without projections or a member statistic (both need a member's whole map) each member is streamed row of
    # windows by row through buffers one patch deep; otherwise the buffers hold the whole volume.
    if member_statistic is not None and member_accumulator is not None:
        raise ValueError("give member_statistic or member_accumulator, not both")
    streaming = not projections and member_statistic is None
    kw = {"device": device, "dtype": accumulate_dtype}
    stats = _Statistics(n_classes, volume, uncertainty, member_labels, int(foreground_std_only), **kw)
    rows = _rows(starts)
    depth = patch[0] if streaming else volume[0]
    member = torch.empty((n_classes, depth, *volume[1:]), **kw)
    weights = torch.empty((depth, *volume[1:]), **kw)

    fmt = memory_format(channels_last)
    models = [model.to(device, memory_format=fmt).eval() for model in models]
    labels_of_members: list[np.ndarray] = []
    statistics: list[object] = []
    crop: tuple = ()
    for view in (None, *projections):
        padded, crop = _pad_image(image if view is None else view.project(image), patch, pad_value)
        image_t = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
        del padded
        for model in models:
            for combo in combos:
                flip_dims = tuple(a + 2 for a in combo)
                stats.start_member()
                accumulator = member_accumulator() if member_accumulator is not None else None
                if streaming:
                    args = (
                        rows,
                        patch,
                        gaussian,
                        member,
                        weights,
                        stats,
                        batch_windows,
                        precision,
                        fmt,
                        crop,
                        accumulator,
                    )
                    _stream_member(model, flip_dims, image_t, *args)
                else:
                    member.zero_()
                    weights.zero_()
                    for _, row in rows:  # the same batches as streamed
                        _predict_windows(
                            model,
                            flip_dims,
                            image_t,
                            row,
                            patch,
                            gaussian,
                            member,
                            weights,
                            0,
                            batch_windows,
                            precision,
                            fmt,
                        )
                    member /= weights
                    if view is not None:
                        _unproject(view, member, crop)
                    if member_statistic is not None:
                        statistics.append(member_statistic(member[(slice(None), *crop)].cpu().numpy()))
                    if accumulator is not None:
                        accumulator.add(member[(slice(None), *crop)].cpu().numpy())
                    stats.fold(0, member)
                if accumulator is not None:
                    statistics.append(accumulator.result())
                if member_labels:
                    labels_of_members.append(stats.member_labels(crop))
        del image_t
    del member, weights

    n_members = stats.n_members
    std = entropy = None
    if uncertainty:
        stats.sq_dev_sum /= n_members
        std = stats.sq_dev_sum.clamp_(min=0).sqrt_()
        entropy = stats.entropy_sum.div_(n_members)

    out_dtype = torch.float16 if half_precision_output else torch.float32
    full = (slice(None), *crop)

    def to_numpy(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
        return np.ascontiguousarray(t.to(dtype).cpu().numpy())

    return EnsembleResult(
        mean_probabilities=to_numpy(stats.mean[full], out_dtype),
        mean_entropy=None if entropy is None else to_numpy(entropy[crop], torch.float32),
        std=None if std is None else to_numpy(std[full], out_dtype),
        n_members=n_members,
        member_labels=tuple(labels_of_members),
        member_statistics=tuple(statistics),
        std_first_class=stats.std_first_class,
    )
