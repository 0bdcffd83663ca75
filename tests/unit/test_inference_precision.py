"""carve.prediction.inference_precision: the run's prediction precision (decision with stubbed timings, the file
every predicting rule reads, the fallback on a device without bf16) and bf16 ensemble statistics against fp32."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from carve.errors import InputError
from carve.planning.plan import PLANS_VERSION
from carve.prediction.inference import sliding_window_probabilities
from carve.prediction.inference_precision import (
    DECISION_FORMAT,
    choose_inference_precision,
    decide_inference_precision,
    load_inference_channels_last,
    load_inference_precision,
    time_window_batches,
)
from carve.prediction.predict import PredictOptions, forward_precision
from carve.training.network import NetworkConfig, UNet3D, save_model
from carve.training.precision import bf16_available

NET = NetworkConfig(in_channels=1, n_classes=3, base_channels=4, max_channels=8,
                    strides=((1, 1, 1), (2, 2, 2)), kernel_sizes=((3, 3, 3), (3, 3, 3)))  # fmt: skip
PATCH = (8, 16, 12)  # anisotropic, as a planned patch is


def _stub(fp32: float, bf16: float, asked: list[str]):
    def measure(precision: str) -> list[float]:
        asked.append(precision)
        return [fp32 if precision == "fp32" else bf16] * 3

    return measure


def test_auto_keeps_bf16_only_when_it_is_clearly_faster(caplog) -> None:
    asked: list[str] = []
    model = UNet3D(NET)
    with caplog.at_level(logging.INFO, logger="carve.prediction.inference_precision"):
        fast = decide_inference_precision(
            "auto", model, PATCH, 2, "cpu", in_channels=1, measure=_stub(0.30, 0.12, asked),
            measure_channels_last=_stub(0.30, 0.11, asked), available=lambda d: True,
        )  # fmt: skip
    assert asked == ["fp32", "bf16", "bf16"]  # the chosen precision timed once more, in channels-last
    assert fast == {
        "format": DECISION_FORMAT,
        "requested": "auto",
        "precision": "bf16",
        "precision_from": "auto: timed, bf16 kept at a speed-up of at least 1.2",
        "channels_last": False,  # 1.09x: below the 1.1 kept
        "device": "cpu",
        "patch_size": [8, 16, 12],
        "batch_windows": 2,
    }
    assert "2 window(s) of 8x16x12 in 0.3000 s fp32, 0.1200 s bf16 (medians; x2.50) -> bf16" in caplog.text
    assert "0.1200 s contiguous, 0.1100 s channels-last in bf16 (medians; x1.09) -> contiguous" in caplog.text
    slow = decide_inference_precision(
        "auto", model, PATCH, 2, "cpu", in_channels=1, measure=_stub(0.30, 0.27, []),
        measure_channels_last=_stub(0.20, 0.27, []), available=lambda d: True,
    )  # fmt: skip
    assert slow["precision"] == "fp32"  # 1.11x: not worth the rounding
    assert slow["channels_last"] is True  # fp32 chosen, and channels-last 1.5x faster in it
    asked.clear()
    none = decide_inference_precision(
        "auto", model, PATCH, 2, "cpu", in_channels=1, measure=_stub(0.3, 0.1, asked), available=lambda d: False
    )
    assert asked == [] and none["precision"] == "fp32" and none["precision_from"] == "auto: cpu has no native bf16"
    assert none["channels_last"] is False  # nothing timed: torch's layout
    fixed = decide_inference_precision(
        "fp32", model, PATCH, 2, "cpu", in_channels=1, measure=_stub(0.3, 0.1, asked), available=lambda d: True
    )
    assert asked == [] and fixed["precision"] == "fp32" and fixed["precision_from"] == "config"
    with pytest.raises(InputError, match="predict.precision: 'half' is not one of auto, fp32, bf16"):
        decide_inference_precision("half", model, PATCH, 2, "cpu", in_channels=1)
    with pytest.raises(InputError, match="no native bf16"):
        decide_inference_precision("bf16", model, PATCH, 2, "cpu", in_channels=1, available=lambda d: False)


def test_channels_last_windows_give_the_contiguous_ensemble() -> None:
    torch.manual_seed(0)
    image = np.random.default_rng(0).standard_normal((1, 10, 20, 14)).astype(np.float32)
    kw = {"n_classes": 3, "overlap": 0.5, "mirror_axes": (2,)}
    plain = sliding_window_probabilities([UNet3D(NET)], image, PATCH, **kw)
    torch.manual_seed(0)
    last = sliding_window_probabilities([UNet3D(NET)], image, PATCH, channels_last=True, **kw)
    np.testing.assert_allclose(last.mean_probabilities, plain.mean_probabilities, atol=1e-5)
    np.testing.assert_allclose(last.std, plain.std, atol=1e-5)
    seconds = time_window_batches(UNet3D(NET), PATCH, 2, "cpu", "fp32", in_channels=1, batches=1, warmup=0,
                                  channels_last=True)  # fmt: skip
    assert len(seconds) == 1 and seconds[0] > 0


def test_window_batches_are_timed_after_the_warm_up() -> None:
    ticks = iter(range(100))
    seconds = time_window_batches(
        UNet3D(NET), PATCH, 2, "cpu", "fp32", in_channels=1, batches=3, warmup=2, timer=lambda: next(ticks)
    )
    assert seconds == [1, 1, 1]  # one start and one stop tick per pass; the 2 warm-up passes are not counted


def test_the_decision_file_is_what_every_job_reads(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    save_model(tmp_path / "fold_0.pt", UNet3D(NET), NET, {"fold": 0})
    plans = {"plans_version": PLANS_VERSION, "patch_size": list(PATCH), "target_spacing_mm": [3.0, 1.0, 1.5]}
    plans |= {"normalisation": [], "n_classes": 3, "network": NET.to_dict(), "channels": [], "mirror_axes": []}
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    out = tmp_path / "inference_precision.json"
    decision = choose_inference_precision(
        tmp_path / "plans.json", [tmp_path / "fold_0.pt"], out, {"precision": "fp32", "batch_windows": 2}, "cpu"
    )
    first = out.read_bytes()
    assert json.loads(first) == decision and decision["precision"] == "fp32" and decision["patch_size"] == [8, 16, 12]
    choose_inference_precision(
        tmp_path / "plans.json", [tmp_path / "fold_0.pt"], out, {"precision": "fp32", "batch_windows": 2}, "cpu"
    )
    assert out.read_bytes() == first  # no timings, no time stamps: the same decision gives the same bytes
    assert load_inference_precision(out, "cpu") == "fp32" and load_inference_channels_last(out) is False
    out.write_text(json.dumps({**decision, "channels_last": "yes"}))
    with pytest.raises(InputError, match="channels_last 'yes' is not true or false"):
        load_inference_channels_last(out)

    out.write_text(json.dumps({**decision, "precision": "bf16"}))
    assert load_inference_precision(out, "cpu", available=lambda d: True) == "bf16"
    with caplog.at_level(logging.WARNING, logger="carve.prediction.inference_precision"):
        assert load_inference_precision(out, "cpu", available=lambda d: False) == "fp32"
    assert "decided bf16, but cpu has no native bf16: predicting in fp32" in caplog.text

    out.write_text(json.dumps({"precision": "bf16"}))
    with pytest.raises(InputError, match="inference_precision.json: not an inference precision decision"):
        load_inference_precision(out, "cpu")
    out.write_text("{")
    with pytest.raises(InputError, match="inference_precision.json: cannot read"):
        load_inference_precision(out, "cpu")
    with pytest.raises(InputError, match="no trained model to time"):
        choose_inference_precision(tmp_path / "plans.json", [], out, {"precision": "auto"}, "cpu")


def test_forward_precision_falls_back_where_the_device_has_no_bf16(monkeypatch, caplog) -> None:
    model, plans = UNet3D(NET), {"patch_size": list(PATCH)}
    assert forward_precision(PredictOptions(precision="fp32"), model, plans, "cpu", 1) == "fp32"
    monkeypatch.setattr("carve.training.precision.bf16_available", lambda device: False)
    with caplog.at_level(logging.WARNING, logger="carve.prediction.predict"):
        assert forward_precision(PredictOptions(precision="bf16"), model, plans, "cpu", 1) == "fp32"
    assert "no native bf16: predicting in fp32" in caplog.text
    assert forward_precision(PredictOptions(precision="auto"), model, plans, "cpu", 1) == "fp32"  # nothing to time


def test_sliding_window_refuses_an_unresolved_precision() -> None:
    image = np.zeros((1, *PATCH), dtype=np.float32)
    with pytest.raises(InputError, match="'auto' is not a resolved precision"):
        sliding_window_probabilities([UNet3D(NET)], image, PATCH, n_classes=3, precision="auto")


@pytest.mark.skipif(
    not bf16_available("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 or AMX): nothing to compare"
)
def test_bf16_ensemble_statistics_are_those_of_fp32_within_tolerance() -> None:
    """The uncertainty maps are built alike in both precisions: probabilities sum to 1 at every voxel, and the
    mean entropy, the standard deviation and the mean probabilities stay within bf16's rounding of fp32's."""
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(UNet3D(NET).eval())
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 14, 30, 20)).astype(np.float32)  # anisotropic, larger than the patch: overlap
    kw = {"n_classes": 3, "overlap": 0.5, "mirror_axes": (2,), "member_labels": True}
    fp32 = sliding_window_probabilities(models, image, PATCH, precision="fp32", **kw)
    bf16 = sliding_window_probabilities(models, image, PATCH, precision="bf16", **kw)
    assert fp32.n_members == bf16.n_members == 4
    for result in (fp32, bf16):
        assert result.mean_probabilities.dtype == np.float32  # the accumulators stay float32
        np.testing.assert_allclose(result.mean_probabilities.sum(0), 1.0, atol=1e-5)
    assert np.abs(bf16.mean_probabilities - fp32.mean_probabilities).max() < 0.02
    assert np.abs(bf16.std - fp32.std).max() < 0.02
    entropy32, entropy16 = float(fp32.mean_entropy.sum()), float(bf16.mean_entropy.sum())
    assert abs(entropy16 - entropy32) <= 0.01 * entropy32
    assert not np.array_equal(bf16.mean_probabilities, fp32.mean_probabilities)  # bf16 really ran
    agree = np.mean(bf16.mean_probabilities.argmax(0) == fp32.mean_probabilities.argmax(0))
    assert agree > 0.97
