"""A configurable 3D U-Net, its topology planner and its (pickle-free) weight files.

Axes follow carve's convention: tensors are ``(B, C, z, y, x)`` in array order, and every per-axis tuple
(strides, kernel sizes, patch sizes, ``spacing_mm``) is in that order too.

``NetworkConfig.strides[i]`` is the downsampling stride at the start of stage ``i`` (stage 0 has ``(1, 1, 1)``),
``kernel_sizes[i]`` the convolution kernel of stage ``i`` (``(1, 3, 3)`` along axes still much coarser than the
finest one), as in nnU-Net's ExperimentPlanner.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carve.io import atomic_write_bytes

MODEL_FORMAT = "carve-unet3d"
MODEL_FORMAT_VERSION = 1
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


def _conv(c_in: int, c_out: int, kernel: Triple, stride: Triple = (1, 1, 1)) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=tuple(k // 2 for k in kernel))


class ConvBlock(nn.Module):
    """Two (conv, instance norm, LeakyReLU); the first conv carries the stage's stride. Residual optional."""

    def __init__(self, c_in: int, c_out: int, kernel: Triple, stride: Triple, slope: float, residual: bool):
        super().__init__()
        self.conv1, self.norm1 = _conv(c_in, c_out, kernel, stride), nn.InstanceNorm3d(c_out, affine=True)
        self.conv2, self.norm2 = _conv(c_out, c_out, kernel), nn.InstanceNorm3d(c_out, affine=True)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.skip: nn.Module | None = None
        if residual:
            needs_proj = c_in != c_out or stride != (1, 1, 1)
            self.skip = nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)


class UNet3D(nn.Module):
    """Plain (or residual-encoder) 3D U-Net; deep-supervision logits while training, plain logits in eval."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        ch, ks, st, slope = config.channels, config.kernel_sizes, config.strides, config.negative_slope
        self.encoder = nn.ModuleList()
        c_prev = config.in_channels
        for i in range(config.n_stages):
            self.encoder.append(ConvBlock(c_prev, ch[i], ks[i], st[i], slope, config.residual))
            c_prev = ch[i]
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(config.n_stages - 2, -1, -1):  # decoder from the deepest skip upwards
            self.upsample.append(nn.ConvTranspose3d(ch[i + 1], ch[i], st[i + 1], stride=st[i + 1], bias=False))
            self.decoder.append(ConvBlock(2 * ch[i], ch[i], ks[i], (1, 1, 1), slope, False))
            self.heads.append(nn.Conv3d(ch[i], config.n_classes, 1))
        self.deep_supervision = config.deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for up, block, head in zip(self.upsample, self.decoder, self.heads, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
            if self.training and self.deep_supervision:
                outputs.append(head(x))
        if self.training and self.deep_supervision:
            return outputs[::-1]  # full resolution first
        return self.heads[-1](x)


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
    n_params = sum(p.numel() for p in UNet3D(config).parameters())
    return activations + 16.0 * n_params


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


def save_model(path: str | os.PathLike, model: nn.Module, network_config: NetworkConfig, extra: dict) -> None:
    """Write weights (tensors) and configuration (primitives) with ``torch.save``, atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "network": network_config.to_dict(),
        "state_dict": state,
        "extra": extra,
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that leaves either the complete file or none (carve.io's atomic write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_payload(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"model file {path} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # the weights-only unpickler met something other than tensors and data
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ValueError(
                f"model file {path} refused: it holds more than tensors and plain data (it asks for "
                f"{found.group(1)}), and unpickling it could run code; carve loads only weight files it wrote"
            ) from None
        opcode = re.search(r"Unsupported operand (\d+)", str(err))
        text = f"pickle opcode {opcode.group(1)} is not allowed" if opcode else "not a weights-only pickle"
        raise ValueError(f"model file {path} cannot be read (corrupt, or not a carve weight file): {text}") from None
    except Exception as err:  # corrupt zip, truncated stream, not a torch file...: one line, no torch advice
        text = f"{type(err).__name__}: " + " ".join(str(err).split()).split(". ")[0]
        raise ValueError(f"model file {path} cannot be read (corrupt, or not a carve weight file): {text}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"model file {path} does not hold a carve model dictionary")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet3D, dict]:
    """Rebuild the network from a file of :func:`save_model`; returns ``(model in eval mode, extra)``."""
    payload = load_payload(path, device)
    if payload.get("format") != MODEL_FORMAT or payload.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(
            f"model file {path} has format {payload.get('format')!r} version {payload.get('version')!r}; "
            f"this carve reads {MODEL_FORMAT!r} version {MODEL_FORMAT_VERSION}"
        )
    try:
        config = NetworkConfig.from_dict(payload["network"])
        model = UNet3D(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"model file {path} does not match the network it describes: {err}") from err
    return model.to(device).eval(), dict(payload.get("extra", {}))
