"""carve.training.precision: the decision with stubbed timings, and bf16 numerics against fp32 on a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carve.errors import InputError
from carve.training.network import NetworkConfig, UNet3D
from carve.training.precision import autocast, bf16_available, choose, resolve_precision, resolved


def test_choose_takes_bf16_only_when_clearly_faster() -> None:
    fast = choose([0.30, 0.28, 0.90], [0.12, 0.13, 0.11])  # medians 0.30 / 0.12: the outlier does not count
    assert fast["precision"] == "bf16" and fast["bf16_speedup"] == 2.5
    assert choose([0.30], [0.26])["precision"] == "fp32"  # 1.15x: below 1.2
    assert choose([0.30], [0.25])["precision"] == "bf16"  # 1.2x exactly
    assert choose([0.30], [0.30], min_speedup=1.0)["precision"] == "bf16"
    assert choose([0.30], [0.60])["precision"] == "fp32"  # bf16 slower (emulated, or tiny convolutions)
    with pytest.raises(ValueError, match="both precisions"):
        choose([], [0.1])
    with pytest.raises(ValueError, match="positive"):
        choose([0.0], [0.1])


def test_resolve_precision_measures_only_for_auto_where_bf16_exists() -> None:
    asked = []

    def measure(precision: str) -> list[float]:
        asked.append(precision)
        return [0.2] if precision == "fp32" else [0.1]

    assert resolve_precision("fp32", "cpu", measure, available=lambda d: True) == {
        "precision": "fp32",
        "precision_from": "config",
    }
    assert asked == []
    chosen = resolve_precision("auto", "cpu", measure, available=lambda d: True)
    assert asked == ["fp32", "bf16"] and chosen["precision"] == "bf16" and chosen["bf16_speedup"] == 2.0
    assert chosen["seconds_per_step"] == {"fp32": 0.2, "bf16": 0.1}
    asked.clear()
    none = resolve_precision("auto", "cuda:0", measure, available=lambda d: False)
    assert asked == [] and none == {"precision": "fp32", "precision_from": "auto: cuda has no native bf16"}
    with pytest.raises(InputError, match="no native bf16.*set precision to auto or fp32"):
        resolve_precision("bf16", "cpu", measure, available=lambda d: False)
    with pytest.raises(InputError, match="'half' is not one of auto, fp32, bf16"):
        resolve_precision("half", "cpu", measure)


def test_resolved_values_and_the_older_name() -> None:
    assert resolved("fp32") == "fp32" and resolved("bf16-autocast") == "bf16"
    with pytest.raises(InputError, match="plans.json: 'auto' is not a resolved precision"):
        resolved("auto", "plans.json")


def test_autocast_is_off_in_fp32_on_any_device() -> None:
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.skipif(
    not bf16_available("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 or AMX): nothing to compare"
)
def test_bf16_forward_pass_is_close_to_fp32_and_its_weights_stay_fp32() -> None:
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(in_channels=1, n_classes=3, base_channels=8, max_channels=32)).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, 16, 32, 32)).astype(np.float32))
    with torch.no_grad():
        reference = torch.softmax(model(x).float(), 1)
        with autocast("cpu", "bf16"):
            low = model(x)
        probabilities = torch.softmax(low.float(), 1)
    assert low.dtype == torch.bfloat16  # the forward pass really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    difference = (probabilities - reference).abs()
    assert float(difference.max()) < 0.05 and float(difference.mean()) < 0.005
    agree = (probabilities.argmax(1) == reference.argmax(1)).float().mean()
    assert float(agree) > 0.97
