"""carve.training.network: U-Net shapes, topology planning, patch fitting, safe weight files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from carve.planning.topology import NetworkConfig, fit_patch_size, forward_flops, plan_topology
from carve.training.network import UNet3D, load_model, save_model

torch.set_num_threads(1)

ANISO = NetworkConfig(
    in_channels=2,
    n_classes=3,
    base_channels=4,
    max_channels=12,
    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 2, 2)),
    kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
)


@pytest.mark.parametrize("residual", [False, True])
def test_unet_shapes_anisotropic_deep_supervision(residual: bool) -> None:
    config = NetworkConfig(**{**ANISO.__dict__, "residual": residual})
    model = UNet3D(config).train()
    x = torch.randn(2, 2, 4, 16, 24)
    outputs = model(x)
    assert isinstance(outputs, list) and len(outputs) == 3
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 4, 16, 24), (2, 3, 4, 8, 12), (2, 3, 2, 4, 6)]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, 4, 16, 24)
    assert config.channels == (4, 8, 12, 12)  # capped at max_channels
    assert config.total_stride == (2, 8, 8)


def test_no_deep_supervision_gives_plain_logits_in_training() -> None:
    model = UNet3D(NetworkConfig(**{**ANISO.__dict__, "deep_supervision": False})).train()
    out = model(torch.randn(1, 2, 4, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 4, 16, 16)


def test_config_rejects_bad_topology() -> None:
    with pytest.raises(ValueError, match="stage 0"):
        NetworkConfig(strides=((2, 2, 2),), kernel_sizes=((3, 3, 3),))
    with pytest.raises(ValueError, match="one \\(z, y, x\\) triple per stage"):
        NetworkConfig(strides=((1, 1, 1), (2, 2, 2)), kernel_sizes=((3, 3, 3),))
    assert NetworkConfig.from_dict(ANISO.to_dict()) == ANISO


def test_plan_topology_anisotropic_known_answer() -> None:
    strides, kernels = plan_topology((20, 160, 160), (3.0, 1.0, 1.0), max_stages=5, min_feature_size=4)
    # z is 3x coarser: not pooled at first, kernel (1, 3, 3); after one in-plane pool spacing (3, 2, 2) is
    # within 2x, so z joins; at z size 5 (< 2 * 4) only y, x pool.
    assert strides == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert kernels == [(1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)]


def test_plan_topology_isotropic_stops_at_min_feature_size() -> None:
    strides, kernels = plan_topology((32, 48, 32), (1.0, 1.0, 1.0), max_stages=6, min_feature_size=4)
    assert strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]  # 32 -> 4 along z, x
    assert all(k == (3, 3, 3) for k in kernels)


@pytest.mark.parametrize(
    ("median", "spacing", "max_voxels"),
    [
        ((36, 50, 36), (1.0, 1.0, 1.0), 200_000),
        ((36, 50, 36), (1.0, 1.0, 1.0), 49_152),
        ((40, 200, 180), (3.0, 0.8, 0.8), 60_000),
        ((120, 300, 300), (1.0, 1.0, 1.0), 100_000),
    ],
)
def test_fit_patch_size_divisible_and_within_budget(median, spacing, max_voxels) -> None:
    patch = fit_patch_size(median, spacing, max_voxels)
    strides, _ = plan_topology(patch, spacing)
    stride = np.prod(np.asarray(strides), axis=0)
    assert (np.asarray(patch) % stride == 0).all()
    assert np.prod(patch) <= max_voxels
    assert (np.asarray(patch) <= np.ceil(np.asarray(median) / stride) * stride).all()


def test_fit_patch_size_covers_small_median_and_follows_physical_extent() -> None:
    assert fit_patch_size((36, 50, 36), (1.0, 1.0, 1.0), 200_000) == (40, 56, 40)
    patch = fit_patch_size((40, 200, 180), (3.0, 0.8, 0.8), 60_000)
    extent_mm = np.asarray(patch) * (3.0, 0.8, 0.8)
    assert extent_mm.max() / extent_mm.min() < 2.5  # roughly cubic in millimetres, not in voxels
    assert patch[0] < patch[1]


def test_forward_flops_known_answer_single_stage() -> None:
    config = NetworkConfig(1, 2, 4, 4, ((1, 1, 1),), ((3, 3, 3),))
    voxels = 8 * 8 * 8
    assert forward_flops(config, (8, 8, 8)) == 2 * 27 * (1 * 4 + 4 * 4) * voxels + 2 * 4 * 2 * voxels


def test_save_load_round_trip_identical_outputs(tmp_path) -> None:
    torch.manual_seed(3)
    model = UNet3D(ANISO).eval()
    path = tmp_path / "m" / "model.pt"
    save_model(path, model, ANISO, {"note": "x", "dice": [0.5, 0.25]})
    loaded, extra = load_model(path)
    assert extra == {"note": "x", "dice": [0.5, 0.25]}
    assert not loaded.training and loaded.config == ANISO
    x = torch.randn(1, 2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_model_refuses_code_executing_pickle(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "carve-unet3d", "version": 1, "payload": _Exploit()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_model(path)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(ValueError, match="plain.pt"):
        load_model(plain)


def test_load_model_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="missing.pt.*does not exist"):
        load_model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_model(corrupt)
    model = UNet3D(ANISO)
    old = tmp_path / "old.pt"
    save_model(old, model, ANISO, {})
    payload = torch.load(old, weights_only=True)
    torch.save({**payload, "version": 999}, old)
    with pytest.raises(ValueError, match="old.pt.*version 999"):
        load_model(old)
    torch.save({**payload, "network": {**payload["network"], "base_channels": 8}}, old)
    with pytest.raises(ValueError, match="old.pt.*does not match"):
        load_model(old)


@pytest.mark.parametrize(
    "config, patch",
    [
        (NetworkConfig(), (32, 48, 32)),
        (NetworkConfig(residual=True, base_channels=8), (24, 32, 32)),
        (
            NetworkConfig(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3))),
            (8, 32, 32),
        ),
    ],
)
def test_training_memory_estimate_covers_what_autograd_keeps(config, patch):
    from carve.planning.topology import PEAK_OVER_SAVED, training_memory_bytes

    model = UNet3D(config).train()
    saved, seen = [0], set()

    def pack(t):
        if (t.data_ptr(), t.numel()) not in seen:
            seen.add((t.data_ptr(), t.numel()))
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(2, config.in_channels, *patch))
    n_params = sum(p.numel() for p in model.parameters())
    estimate = training_memory_bytes(config, patch, batch_size=2)
    measured = saved[0] * PEAK_OVER_SAVED + 16 * n_params
    assert 0.85 * measured <= estimate <= 1.25 * measured
