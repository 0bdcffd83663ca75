"""Several input channels end to end through the package: convert (4D), plan, preprocess, train, predict.

The object is visible only in the second channel, so a model that learns it must read that channel.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from carve.evaluation.metrics import overlap_metrics
from carve.imaging.convert import ChannelSpec, convert_image
from carve.imaging.io import Geometry, read_image, write_channels, write_image
from carve.planning.plan import PlanOptions, plan_dataset
from carve.planning.preprocess import load_case, preprocess_case
from carve.prediction.predict import PredictOptions, predict_case
from carve.training.augment import AugmentConfig
from carve.training.fold import train_config_from
from carve.training.train import train_fold

torch.set_num_threads(1)
GEOMETRY = Geometry((2.0, 1.0, 1.0), (4.0, -3.0, 7.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))


def _case(seed: int, shape=(12, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = np.asarray(shape) / 2 + rng.uniform(-2, 2, 3) * (0.5, 1, 1)
    grid = np.indices(shape).astype(float)
    dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, GEOMETRY.spacing_mm, strict=True)))
    label = (dist <= 6.0).astype(np.uint8)
    noise_only = rng.normal(50.0, 5.0, shape)
    with_object = 200.0 * label + rng.normal(100.0, 20.0, shape)
    return np.stack([noise_only, with_object]).astype(np.float32), label


def test_two_channel_case_trains_and_predicts(tmp_path: Path) -> None:
    channels = [ChannelSpec("T1"), ChannelSpec("T2")]
    images, labels = [], []
    for i in range(3):
        data, label = _case(i)
        write_channels(tmp_path / f"raw{i}.nii.gz", data, GEOMETRY)
        convert_image(f"c{i}", tmp_path / f"raw{i}.nii.gz", tmp_path / f"c{i}.nii.gz", channels=channels)
        write_image(tmp_path / f"c{i}_label.nii.gz", label, GEOMETRY)
        images.append(tmp_path / f"c{i}.nii.gz")
        labels.append(tmp_path / f"c{i}_label.nii.gz")
    options = PlanOptions(modality="MR", channels=(("T1", None), ("T2", None)), max_patch_voxels=8 * 16 * 16)
    plans = plan_dataset(images[:2], labels[:2], {1: "ball"}, options, tmp_path / "plans.json")
    assert len(plans["normalisation"]) == 2 and [c["name"] for c in plans["channels"]] == ["T1", "T2"]
    cases = []
    for i in range(2):
        preprocess_case(images[i], labels[i], plans, tmp_path / f"p{i}.npz")
        image, label, _ = load_case(tmp_path / f"p{i}.npz")
        assert image.shape[0] == 2
        cases.append((image, label))
    config = train_config_from(plans, {"iterations_per_epoch": 10}, seed=0, iterations=60)
    assert config.network.in_channels == 2
    light = AugmentConfig(p_rotation=0.2, p_scaling=0.2, p_gamma=0.0, p_noise=0.0, p_blur=0.0)
    config = replace(config, augment=light, learning_rate=1e-2, network=replace(config.network, base_channels=4))
    model = train_fold(cases, [], config, tmp_path / "fold_0")
    outputs = [tmp_path / "pred.nii.gz", tmp_path / "unc.nii.gz", tmp_path / "scores.tsv"]
    predict_case("c2", images[2], [model], plans, *outputs, options=PredictOptions(mirror_axes=(), precision="fp32"))
    predicted, geometry = read_image(outputs[0])
    assert predicted.shape == labels_shape(labels[2]) and geometry.is_close(GEOMETRY, 1e-4, predicted.shape)
    reference = read_image(labels[2])[0]
    assert overlap_metrics(reference == 1, predicted == 1)["dice"] > 0.7


def labels_shape(path: Path) -> tuple[int, ...]:
    return read_image(path)[0].shape
