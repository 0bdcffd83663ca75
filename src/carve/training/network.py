"""A configurable 3D U-Net and its (pickle-free) weight files; its topology planner and cost estimates are in
:mod:`carve.planning.topology` (torch-free, for the rules that plan) and re-exported here.

Axes follow carve's convention: tensors are ``(B, C, z, y, x)`` in array order, and every per-axis tuple
(strides, kernel sizes, patch sizes, ``spacing_mm``) is in that order too.

``NetworkConfig.strides[i]`` is the downsampling stride at the start of stage ``i`` (stage 0 has ``(1, 1, 1)``),
``kernel_sizes[i]`` the convolution kernel of stage ``i`` (``(1, 3, 3)`` along axes still much coarser than the
finest one), as in nnU-Net's ExperimentPlanner.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carve.errors import InputError
from carve.imaging.io import atomic_write_bytes
from carve.planning.topology import (  # noqa: F401  (re-exported: carve.training.network was their home)
    PEAK_OVER_SAVED,
    SAVED_PER_CHANNEL_VOXEL,
    NetworkConfig,
    Triple,
    encoder_channel_voxels,
    fit_patch_size,
    forward_flops,
    parameter_count,
    plan_topology,
    training_memory_bytes,
)

MODEL_FORMAT = "carve-unet3d"
MODEL_FORMAT_VERSION = 1


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


def save_model(path: str | os.PathLike, model: nn.Module, network_config: NetworkConfig, extra: dict) -> None:
    """Write weights (tensors) and configuration (primitives) with ``torch.save``, atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}  # any layout
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "network": network_config.to_dict(),
        "state_dict": state,
        "extra": extra,
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that leaves either the complete file or none (carve.imaging.io's atomic write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_payload(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"model file {path} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # the weights-only unpickler met something other than tensors and data
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise InputError(
                f"model file {path} refused: it holds more than tensors and plain data (it asks for "
                f"{found.group(1)}), and unpickling it could run code; carve loads only weight files it wrote"
            ) from None
        opcode = re.search(r"Unsupported operand (\d+)", str(err))
        text = f"pickle opcode {opcode.group(1)} is not allowed" if opcode else "not a weights-only pickle"
        raise InputError(f"model file {path} cannot be read (corrupt, or not a carve weight file): {text}") from None
    except Exception as err:  # corrupt zip, truncated stream, not a torch file...: one line, no torch advice
        text = f"{type(err).__name__}: " + " ".join(str(err).split()).split(". ")[0]
        raise InputError(f"model file {path} cannot be read (corrupt, or not a carve weight file): {text}") from None
    if not isinstance(payload, dict):
        raise InputError(f"model file {path} does not hold a carve model dictionary")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet3D, dict]:
    """Rebuild the network from a file of :func:`save_model`; returns ``(model in eval mode, extra)``."""
    payload = load_payload(path, device)
    if payload.get("format") != MODEL_FORMAT or payload.get("version") != MODEL_FORMAT_VERSION:
        raise InputError(
            f"model file {path} has format {payload.get('format')!r} version {payload.get('version')!r}; "
            f"this carve reads {MODEL_FORMAT!r} version {MODEL_FORMAT_VERSION}"
        )
    try:
        config = NetworkConfig.from_dict(payload["network"])
        model = UNet3D(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"model file {path} does not match the network it describes: {err}") from err
    return model.to(device).eval(), dict(payload.get("extra", {}))
