"""Data augmentation on a training batch, in torch, on the training device.

Input: images ``(B, C, *crop)`` and labels ``(B, *crop)`` where ``crop = patch + 2 * margin`` (see
:func:`spatial_margin`): the sampler cuts a slightly larger box so that rotated or zoomed-out patches are filled
with real voxels rather than padding, as nnU-Net does. Output: ``(B, C, *patch)`` float and ``(B, *patch)`` int64.

Geometry is handled in millimetres: rotations and scalings act on physical coordinates (``spacing_mm`` per array
axis), so anisotropic voxels are rotated correctly. When the spacing is anisotropic (ratio >= 3), rotations
are mostly about the coarse (through-plane) axis. Labels are resampled with nearest neighbour.
All randomness comes from one seeded ``torch.Generator`` (on the CPU) for reproducibility.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

ANISOTROPY_RATIO = 3.0


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of each augmentation; all zero probabilities = identity."""

    p_rotation: float = 0.2
    rotation_deg: float = 20.0  # about every axis (about the coarse axis only when anisotropic)
    rotation_deg_anisotropic: float = 5.0  # about the fine axes when the spacing is anisotropic
    p_scaling: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.2)  # > 1 zooms in
    p_elastic: float = 0.0
    elastic_sigma_mm: float = 1.5  # std of the displacement at the control points
    elastic_control_points: int = 4  # per axis
    p_mirror: float = 0.0  # per axis in mirror_axes
    mirror_axes: tuple[
        int, ...
    ] = ()  # canonical axes; in a run set from the plans (carve.training.fold.train_config_from)
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.1
    noise_std_max: float = 0.1
    p_blur: float = 0.1
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)  # in finest voxels, isotropic in mm

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability, got {value}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes must be array axes 0, 1, 2, got {self.mirror_axes}")


def stronger(config: AugmentConfig) -> AugmentConfig:
    """The noisy student's augmentation (Xie et al. 2020: the student learns under more noise than its teacher
    predicted with): every probability but mirroring's doubled, at most 1; mirroring stays as planned (it may not
    swap sides the labels name)."""
    changes = {
        name: min(1.0, 2.0 * value)
        for name, value in vars(config).items()
        if name.startswith("p_") and name != "p_mirror"
    }
    return replace(config, **changes)


def _max_angles_rad(config: AugmentConfig, spacing_mm: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.max() / spacing.min() >= ANISOTROPY_RATIO:
        coarse = int(np.argmax(spacing))
        angles = np.full(3, config.rotation_deg_anisotropic)
        angles[coarse] = config.rotation_deg
    else:
        angles = np.full(3, config.rotation_deg)
    return np.deg2rad(angles)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles about array axes 0, 1, 2 -> (B, 3, 3) rotations of array-order coordinates."""
    mats = []
    for axis in range(3):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        m = torch.eye(3, dtype=angles.dtype).repeat(len(angles), 1, 1)
        i, j = [a for a in range(3) if a != axis]
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def spatial_margin(
    config: AugmentConfig, patch_size: Sequence[int], spacing_mm: Sequence[float]
) -> tuple[int, int, int]:
    """Voxels to add on each side of the patch so that any rotation/scaling/deformation stays inside the crop."""
    if config.p_rotation == 0 and config.p_scaling == 0 and config.p_elastic == 0:
        return (0, 0, 0)
    spacing = np.asarray(spacing_mm, dtype=float)
    half_mm = np.asarray(patch_size) * spacing / 2
    max_angles = _max_angles_rad(config, spacing) if config.p_rotation > 0 else np.zeros(3)
    needed = half_mm.copy()
    for signs in itertools.product((-1, 0, 1), repeat=3):
        r = rotation_matrices(torch.from_numpy((max_angles * np.asarray(signs))[None]))[0].numpy()
        needed = np.maximum(needed, np.abs(r) @ half_mm)
    s_min = min(config.scale_range) if config.p_scaling > 0 else 1.0
    needed = needed / min(s_min, 1.0) + (3 * config.elastic_sigma_mm if config.p_elastic > 0 else 0.0)
    return tuple(int(math.ceil(max(0.0, m) - 1e-6)) for m in (needed - half_mm) / spacing)  # type: ignore[return-value]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def warp(
    images: torch.Tensor,
    labels: torch.Tensor,
    angles_rad: torch.Tensor,
    scales: torch.Tensor,
    patch_size: Sequence[int],
    spacing_mm: Sequence[float],
    displacement_mm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate (``angles_rad`` (B, 3) about array axes 0, 1, 2), scale (``scales`` (B,), > 1 zooms in) and
    optionally deform (``displacement_mm`` (B, 3, n, n, n) coarse field) the centre ``patch_size`` of a crop.

    Transforms act on physical coordinates about the crop centre; images bilinear, labels nearest.
    """
    patch, crop = tuple(patch_size), images.shape[2:]
    sp = torch.as_tensor(spacing_mm, dtype=torch.float64)
    h_out = torch.as_tensor(patch, dtype=torch.float64) * sp / 2
    h_in = torch.as_tensor(crop, dtype=torch.float64) * sp / 2
    a = rotation_matrices(angles_rad.double()) / scales.double()[:, None, None]
    theta = (1 / h_in)[None, :, None] * a * h_out[None, None, :]  # array order, normalised coordinates
    theta = theta.flip(1).flip(2)  # to affine_grid's (x, y, z) order
    theta = torch.cat([theta, torch.zeros(len(a), 3, 1, dtype=theta.dtype)], dim=2).float()
    grid = F.affine_grid(theta, [len(a), 1, *patch], align_corners=False).to(images.device)
    if displacement_mm is not None:
        disp = F.interpolate(displacement_mm.float(), size=patch, mode="trilinear", align_corners=True)
        disp = disp / h_in.float()[None, :, None, None, None]
        grid = grid + disp.flip(1).permute(0, 2, 3, 4, 1).to(images.device)  # channels (z,y,x) -> (x,y,z)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, lab[:, 0].to(labels.dtype)


def _spatial(images, labels, patch, spacing, config, g):
    b = images.shape[0]
    margin = [(c - p) // 2 for c, p in zip(images.shape[2:], patch, strict=True)]
    centre = (slice(None), *(slice(m, m + p) for m, p in zip(margin, patch, strict=True)))
    do_rot = torch.rand(b, generator=g) < config.p_rotation
    do_scale = torch.rand(b, generator=g) < config.p_scaling
    do_elastic = torch.rand(b, generator=g) < config.p_elastic
    max_angles = torch.as_tensor(_max_angles_rad(config, spacing))
    angles = (2 * torch.rand(b, 3, generator=g, dtype=torch.float64) - 1) * max_angles * do_rot[:, None]
    scales = torch.where(do_scale, _uniform(b, *config.scale_range, g), torch.ones(b, dtype=torch.float64))
    n_cp = config.elastic_control_points
    field = torch.randn(b, 3, n_cp, n_cp, n_cp, generator=g) * config.elastic_sigma_mm * do_elastic.view(-1, 1, 1, 1, 1)
    out_img = images[(slice(None), *centre)].clone()
    out_lab = labels[centre].clone()
    idx = torch.nonzero(do_rot | do_scale | do_elastic).flatten()
    if len(idx):
        disp = field[idx] if do_elastic.any() else None
        dev = idx.to(images.device)
        out_img[dev], out_lab[dev] = warp(images[dev], labels[dev], angles[idx], scales[idx], patch, spacing, disp)
    return out_img, out_lab


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))


def _blur(x: torch.Tensor, sigma: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per sample in units of the finest voxel (isotropic in millimetres)."""
    b, c = x.shape[:2]
    y = x.reshape(1, b * c, *x.shape[2:])
    for axis in range(3):
        sig = sigma.double() * min(spacing_mm) / spacing_mm[axis]
        radius = int(math.ceil(3 * float(sig.max())))
        if radius == 0 or float(sig.max()) < 0.2:
            continue
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.device, x.dtype)  # (b*c, taps)
        shape = [b * c, 1, 1, 1, 1]
        shape[2 + axis] = len(t)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.view(shape), groups=b * c)
    return y.view_as(x)


def _intensity(x: torch.Tensor, config: AugmentConfig, spacing_mm: Sequence[float], g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    dims = tuple(range(1, x.ndim))
    if config.p_noise > 0:
        std = _uniform(b, 0, config.noise_std_max, g) * (torch.rand(b, generator=g) < config.p_noise)
        if std.any():
            x = x + _per_sample(std, x) * torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    if config.p_blur > 0:
        chosen = torch.nonzero(torch.rand(b, generator=g) < config.p_blur).flatten()
        sigma = _uniform(len(chosen), *config.blur_sigma_range, g)
        if len(chosen):
            x = x.clone()
            x[chosen.to(x.device)] = _blur(x[chosen.to(x.device)], sigma, spacing_mm)
    if config.p_brightness > 0:
        f = _uniform(b, *config.brightness_range, g)
        x = x * _per_sample(torch.where(torch.rand(b, generator=g) < config.p_brightness, f, 1.0), x)
    if config.p_contrast > 0:
        f = _uniform(b, *config.contrast_range, g)
        f = _per_sample(torch.where(torch.rand(b, generator=g) < config.p_contrast, f, 1.0), x)
        mean, lo, hi = x.mean(dims, keepdim=True), x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        x = torch.clamp((x - mean) * f + mean, lo, hi)
    if config.p_gamma > 0:
        gamma = _uniform(b, *config.gamma_range, g)
        chosen = torch.rand(b, generator=g) < config.p_gamma
        if chosen.any():
            mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
            lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
            y = ((x - lo) / (hi - lo + 1e-7)) ** _per_sample(gamma, x) * (hi - lo + 1e-7) + lo
            y = (y - y.mean(dims, keepdim=True)) / (y.std(dims, keepdim=True) + 1e-7) * std + mean  # keep stats
            x = torch.where(_per_sample(chosen, x).bool(), y, x)
    return x


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: AugmentConfig,
    patch_size: Sequence[int],
    spacing_mm: Sequence[float],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch cut with :func:`spatial_margin` and return the centre ``patch_size`` of it."""
    patch = tuple(int(p) for p in patch_size)
    if images.ndim != 5 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"augment_batch needs images (B, C, z, y, x) and labels (B, z, y, x), got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if any((c - p) < 0 or (c - p) % 2 for c, p in zip(images.shape[2:], patch, strict=True)):
        raise ValueError(f"crop {tuple(images.shape[2:])} must exceed patch {patch} by an even margin per axis")
    x, y = _spatial(images.float(), labels.long(), patch, spacing_mm, config, generator)
    x = _intensity(x, config, tuple(float(v) for v in spacing_mm), generator)
    b = x.shape[0]
    for axis in config.mirror_axes:
        flip = torch.nonzero(torch.rand(b, generator=generator) < config.p_mirror).flatten().to(x.device)
        if len(flip):
            x[flip] = x[flip].flip(axis + 2)
            y[flip] = y[flip].flip(axis + 1)
    return x.contiguous(), y.contiguous()
