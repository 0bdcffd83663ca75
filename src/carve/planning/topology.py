"""The U-Net's topology and cost, without torch: what planning needs (rule ``plan``), kept apart from
:mod:`carve.training.network` (the torch modules and weight files), which re-exports it.

Axes follow carve's convention: every per-axis tuple (strides, kernel sizes, patch sizes, ``spacing_mm``) is in
array order ``(z, y, x)``.

``NetworkConfig.strides[i]`` is the downsampling stride at the start of stage ``i`` (stage 0 has ``(1, 1, 1)``),
``kernel_sizes[i]`` the convolution kernel of stage ``i`` (``(1, 3, 3)`` along axes still much coarser than the
finest one), as in nnU-Net's ExperimentPlanner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class NetworkConfig:
    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 16
    max_channels: int = 128
    strides: tuple[Triple, ...] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    kernel_sizes: tuple[Triple, ...] = ((3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    residual: bool = False
    deep_supervision: bool = True
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        strides = tuple(tuple(int(v) for v in s) for s in self.strides)
        kernels = tuple(tuple(int(v) for v in k) for k in self.kernel_sizes)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "kernel_sizes", kernels)
        if len(strides) != len(kernels) or not strides or any(len(s) != 3 for s in strides + kernels):
            raise ValueError(f"strides and kernel_sizes need one (z, y, x) triple per stage: {strides}, {kernels}")
        if strides[0] != (1, 1, 1):
            raise ValueError(f"stage 0 must have stride (1, 1, 1), got {strides[0]}")
        if any(k % 2 == 0 for k in sum(kernels, ())):
            raise ValueError(f"kernel sizes must be odd, got {kernels}")

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(min(self.base_channels * 2**i, self.max_channels) for i in range(self.n_stages))

    @property
    def total_stride(self) -> Triple:
        return tuple(int(np.prod([s[a] for s in self.strides])) for a in range(3))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = [list(s) for s in self.strides]
        d["kernel_sizes"] = [list(k) for k in self.kernel_sizes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        return cls(
            **{**d, "strides": tuple(map(tuple, d["strides"])), "kernel_sizes": tuple(map(tuple, d["kernel_sizes"]))}
        )


def forward_flops(config: NetworkConfig, patch_size: Sequence[int]) -> float:
    """Multiply-adds x 2 of one forward pass of one sample (convolutions only; training costs about 3x)."""
    total, shape = 0.0, np.asarray(patch_size, dtype=float)
    shapes, ch = [], config.channels
    c_prev = config.in_channels
    for i in range(config.n_stages):
        shape = np.ceil(shape / np.asarray(config.strides[i]))
        shapes.append(shape)
        k = float(np.prod(config.kernel_sizes[i]))
        total += 2 * k * (c_prev * ch[i] + ch[i] * ch[i]) * shape.prod()
        c_prev = ch[i]
    for i in range(config.n_stages - 2, -1, -1):
        k, vox = float(np.prod(config.kernel_sizes[i])), shapes[i].prod()
        total += 2 * float(np.prod(config.strides[i + 1])) * ch[i + 1] * ch[i] * shapes[i + 1].prod()
        total += 2 * k * (2 * ch[i] * ch[i] + ch[i] * ch[i]) * vox
    return total + 2 * ch[0] * config.n_classes * shapes[0].prod()


def parameter_count(config: NetworkConfig) -> int:
    """Trainable parameters of ``carve.training.network.UNet3D(config)``, counted without building it (so without torch;
    tests/unit/test_env_boundary.py checks it against the torch module's own count)."""
    ch, n_params = config.channels, 0

    def block(c_in: int, c_out: int, kernel: Triple, stride: Triple, residual: bool) -> int:
        k = math.prod(kernel)
        convs = (c_in * c_out * k + c_out) + (c_out * c_out * k + c_out)  # two convolutions with bias
        norms = 2 * 2 * c_out  # two affine instance norms
        skip = c_in * c_out if residual and (c_in != c_out or tuple(stride) != (1, 1, 1)) else 0  # 1x1x1, no bias
        return convs + norms + skip

    c_prev = config.in_channels
    for i in range(config.n_stages):
        n_params += block(c_prev, ch[i], config.kernel_sizes[i], config.strides[i], config.residual)
        c_prev = ch[i]
    for i in range(config.n_stages - 2, -1, -1):
        n_params += ch[i + 1] * ch[i] * math.prod(config.strides[i + 1])  # transposed convolution, no bias
        n_params += block(2 * ch[i], ch[i], config.kernel_sizes[i], (1, 1, 1), False)
        n_params += ch[i] * config.n_classes + config.n_classes  # 1x1x1 head of the stage
    return n_params


# Float32 tensors autograd keeps for the backward pass, per channel-voxel of the encoder stages and per sample:
# measured with torch.autograd.graph.saved_tensors_hooks on plain and residual U-Nets of 4 and 5 stages,
# isotropic and anisotropic (10.3-10.8; tests/unit/test_network.py checks the estimate against the hooks).
SAVED_PER_CHANNEL_VOXEL = 10.8
PEAK_OVER_SAVED = 1.3  # the gradients of the activations live beside them during backward


def encoder_channel_voxels(config: NetworkConfig, patch_size: Sequence[int]) -> float:
    """Sum over encoder stages of channels x voxels for one sample."""
    shape, total = np.asarray(patch_size, dtype=float), 0.0
    for i in range(config.n_stages):
        shape = np.ceil(shape / np.asarray(config.strides[i]))
        total += config.channels[i] * shape.prod()
    return total


def training_memory_bytes(config: NetworkConfig, patch_size: Sequence[int], batch_size: int) -> float:
    """Estimated peak memory of one training iteration: activations kept for backward (float32), their
    gradients, and weights with their gradients and two AdamW moments."""
    activations = (
        4.0 * SAVED_PER_CHANNEL_VOXEL * PEAK_OVER_SAVED * batch_size * encoder_channel_voxels(config, patch_size)
    )
    return activations + 16.0 * parameter_count(config)


def plan_topology(
    patch_size: Sequence[int], spacing_mm: Sequence[float], max_stages: int = 5, min_feature_size: int = 4
) -> tuple[list[Triple], list[Triple]]:
    """Per-stage strides and kernel sizes in the spirit of nnU-Net's ``get_pool_and_conv_props``.

    An axis is pooled only while its current spacing is within 2x of the finest and its feature size stays
    >= ``min_feature_size``; its kernel is 1 while its spacing is still >= 2x the finest, 3 from then on.
    """
    spacing = [float(s) for s in spacing_mm]
    size = [float(p) for p in patch_size]
    if len(spacing) != 3 or len(size) != 3 or min(spacing) <= 0 or min(size) < 1:
        raise ValueError(f"need three positive patch sizes and spacings, got {patch_size}, {spacing_mm}")
    kernel = [3 if s / min(spacing) < 2 else 1 for s in spacing]
    strides: list[Triple] = [(1, 1, 1)]
    kernels: list[Triple] = [tuple(kernel)]  # type: ignore[list-item]
    while len(strides) < max_stages:
        axes = [a for a in range(3) if size[a] >= 2 * min_feature_size]
        if not axes:
            break
        finest = min(spacing[a] for a in axes)
        axes = [a for a in axes if spacing[a] / finest < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * min_feature_size:
            break
        stride = [2 if a in axes else 1 for a in range(3)]
        for a in axes:
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        kernel = [3 if kernel[a] == 3 or spacing[a] / min(spacing) < 2 else 1 for a in range(3)]
        strides.append(tuple(stride))  # type: ignore[arg-type]
        kernels.append(tuple(kernel))  # type: ignore[arg-type]
    return strides, kernels


def fit_patch_size(
    median_shape_vox: Sequence[int],
    spacing_mm: Sequence[float],
    max_voxels: int,
    max_stages: int = 5,
    min_feature_size: int = 4,
) -> tuple[int, int, int]:
    """A patch whose physical extent is as cubic as the median case allows, within ``max_voxels``.

    The patch covers at most the median shape (rounded up to the network's total stride) and is divisible by
    the total stride of ``plan_topology`` on itself.
    """
    shape = np.maximum(np.asarray(median_shape_vox, dtype=float), 1)
    spacing = np.asarray(spacing_mm, dtype=float)
    if shape.size != 3 or spacing.size != 3 or max_voxels < 1:
        raise ValueError(f"fit_patch_size needs 3D shape/spacing and max_voxels >= 1: {median_shape_vox}, {spacing}")
    lo, hi = 0.0, float((shape * spacing).max())  # side of a cube in mm, clipped to the median shape
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(shape, mid / spacing).prod() <= max_voxels else (lo, mid)
    patch = np.maximum(np.minimum(shape, lo / spacing), 1)

    def divisor(p: np.ndarray) -> np.ndarray:
        strides, _ = plan_topology(p, spacing, max_stages, min_feature_size)
        return np.prod(np.asarray(strides), axis=0)

    for _ in range(20):
        d = divisor(patch)
        cap = np.ceil(shape / d) * d  # never more than the median shape needs
        up = np.minimum(np.ceil(patch / d) * d, cap)
        new = up if up.prod() <= max_voxels else np.maximum(np.floor(patch / d), 1) * d
        while new.prod() > max_voxels and (new > d).any():  # shrink the physically longest reducible axis
            extent = np.where(new > d, new * spacing, -1)
            new[int(np.argmax(extent))] -= d[int(np.argmax(extent))]
        while True:  # spend what is left of the budget on the physically shortest axis that can still grow
            fits = [a for a in range(3) if new[a] < cap[a] and new.prod() / new[a] * (new[a] + d[a]) <= max_voxels]
            if not fits:
                break
            a = min(fits, key=lambda i: (new[i] * spacing[i], new[i] - cap[i]))
            new[a] += d[a]
        if np.array_equal(new, patch) and (np.mod(new, divisor(new)) == 0).all():
            break
        patch = new
    d = divisor(patch)
    patch = np.maximum(np.floor(patch / d), 1) * d
    return tuple(int(p) for p in patch)  # type: ignore[return-value]
