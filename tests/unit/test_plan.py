import json

import numpy as np
import pytest

from carve.imaging.io import Geometry, write_channels, write_image
from carve.planning.plan import (
    PLANS_VERSION,
    PlanError,
    PlanOptions,
    choose_target_spacing,
    fingerprint,
    load_plans,
    make_plans,
)

LABELS = {1: "organ"}


def _case(tmp_path, name, spacing, rng, channels=1, shape=(8, 20, 18)):
    geometry = Geometry(spacing, (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 5:15, 4:12] = 1
    image = np.stack([rng.normal(100.0 * (c + 1), 10.0, size=shape) + 400.0 * c * labels for c in range(channels)])
    write_channels(tmp_path / f"{name}_img.nii.gz", image.astype(np.float32), geometry)
    write_image(tmp_path / f"{name}_lab.nii.gz", labels, geometry)
    return tmp_path / f"{name}_img.nii.gz", tmp_path / f"{name}_lab.nii.gz"


def test_target_spacing_is_median_and_anisotropic_axis_takes_10th_percentile():
    assert choose_target_spacing([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [3.0, 1.0, 1.0]]) == (2.0, 1.0, 1.0)
    # coarse axis more than 3x the others: 10th percentile, not the median
    spacings = [[5.0, 0.8, 0.8], [6.0, 0.8, 0.8], [4.0, 0.8, 0.8], [7.0, 0.8, 0.8]]
    target = choose_target_spacing(spacings)
    assert target[1:] == (0.8, 0.8)
    assert target[0] == pytest.approx(np.percentile([5, 6, 4, 7], 10))


def test_fingerprint_and_plans_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [_case(tmp_path, f"c{i}", (3.0, 1.0, 0.9), rng, channels=2) for i in range(3)]
    fp = fingerprint([p[0] for p in pairs], [p[1] for p in pairs], seed=1)
    assert fp["cases"] == 3 and fp["shapes_vox"][0] == [8, 20, 18]
    assert len(fp["foreground_intensity"]) == 2
    # foreground of channel 1 is brighter by 400 + 100
    assert fp["foreground_intensity"][1]["mean"] - fp["foreground_intensity"][0]["mean"] == pytest.approx(500, abs=5)
    options = PlanOptions(modality="MR", channels=(("T1", None), ("CT", "CT")))
    plans = make_plans(fp, LABELS, options)
    assert [c["name"] for c in plans["channels"]] == ["T1", "CT"]
    assert plans["normalisation"][0] == {"scheme": "zscore_per_image"}
    ct = plans["normalisation"][1]
    assert ct["scheme"] == "ct" and ct["clip"][0] < ct["mean"] < ct["clip"][1]
    assert plans["plans_version"] == PLANS_VERSION and plans["n_classes"] == 2
    with pytest.raises(PlanError, match="names 1 channel"):
        make_plans(fp, LABELS, PlanOptions(channels=(("only", None),)))


def test_fingerprint_refuses_mixed_channel_counts(tmp_path):
    rng = np.random.default_rng(0)
    a = _case(tmp_path, "a", (1.0, 1.0, 1.0), rng, channels=2)
    b = _case(tmp_path, "b", (1.0, 1.0, 1.0), rng, channels=1)
    with pytest.raises(PlanError, match=r"b_img.nii.gz: 1 channel\(s\), the first case has 2"):
        fingerprint([a[0], b[0]], [a[1], b[1]])


def test_plans_with_gaps_in_labels_or_old_version_refused(tmp_path):
    rng = np.random.default_rng(0)
    img, lab = _case(tmp_path, "a", (1.0, 1.0, 1.0), rng)
    fp = fingerprint([img], [lab])
    with pytest.raises(PlanError, match="without gaps"):
        make_plans(fp, {1: "a", 3: "c"}, PlanOptions())
    plans = make_plans(fp, LABELS, PlanOptions())
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({**plans, "plans_version": 1}))
    with pytest.raises(PlanError, match="plans version 1 is not"):
        load_plans(path)
    path.write_text(json.dumps(plans))
    assert load_plans(path)["channels"] == [{"name": "image", "modality": "MR"}]


def test_patch_fitted_to_device_memory(tmp_path):
    from carve.planning.topology import NetworkConfig, training_memory_bytes

    rng = np.random.default_rng(0)
    pairs = [_case(tmp_path, f"c{i}", (1.0, 1.0, 1.0), rng, shape=(96, 96, 96)) for i in range(2)]
    fp = fingerprint([p[0] for p in pairs], [p[1] for p in pairs])
    roomy = make_plans(fp, LABELS, PlanOptions(max_patch_voxels=64**3, memory_gb=64.0))
    tight = make_plans(fp, LABELS, PlanOptions(max_patch_voxels=64**3, memory_gb=0.5))
    assert np.prod(roomy["patch_size"]) > np.prod(tight["patch_size"])
    for plans, budget in ((roomy, 64.0), (tight, 0.5)):
        net = plans["network"]
        config = NetworkConfig(1, 2, net["base_channels"], net["max_channels"], net["strides"], net["kernel_sizes"])
        need = training_memory_bytes(config, plans["patch_size"], plans["batch_size"]) / 2**30
        assert need <= budget and plans["memory"]["budget_gib"] == budget
        assert plans["memory"]["estimated_gib"] == pytest.approx(need, abs=0.01)
    assert roomy["memory"]["device"] == "cpu" and np.prod(roomy["patch_size"]) <= 64**3
    with pytest.raises(PlanError, match="needs .* GiB, more than the 0.00 GiB for training on cpu"):
        make_plans(fp, LABELS, PlanOptions(memory_gb=0.001, base_channels=32, batch_size=8))
    # the CPU default: the compute budget, whatever the memory
    default = make_plans(fp, LABELS, PlanOptions())
    assert np.prod(default["patch_size"]) <= 48 * 64 * 48 and default["memory"]["budget_gib"] > 0


def test_plans_of_several_datasets_normalise_each_its_own_way(tmp_path):
    """Two datasets: an MR one (per-image z-score) and a CT one whose clip and mean come from its own cases only;
    a case of either sees its dataset's normalisation and classes, and a case without one is refused."""
    from carve.planning.plan import plan_dataset, plans_for_dataset

    rng = np.random.default_rng(2)
    mr = [_case(tmp_path, f"m{i}", (1.0, 1.0, 1.0), rng) for i in range(2)]
    ct = [_case(tmp_path, f"c{i}", (1.0, 1.0, 1.0), rng, channels=2) for i in range(2)]
    ct = [(img, lab) for img, lab in ct]
    # one channel per case: write the CT-like cases' second channel (bright foreground) as their only one
    from carve.imaging.io import read_channels

    for img, _ in ct:
        data, geometry = read_channels(img)
        write_channels(img, data[1:], geometry)
    pairs = mr + ct
    datasets = {
        "brain": {"modality": "MR", "cases": [0, 1], "classes": [0, 1]},
        "body": {"modality": "CT", "cases": [2, 3], "classes": [0, 2]},
    }
    plans = plan_dataset(
        [p[0] for p in pairs], [p[1] for p in pairs], {1: "a", 2: "b"}, PlanOptions(), tmp_path / "p.json", datasets
    )
    assert load_plans(tmp_path / "p.json")["datasets"] == plans["datasets"]
    assert plans["datasets"]["brain"]["normalisation"] == [{"scheme": "zscore_per_image"}]
    body = plans["datasets"]["body"]["normalisation"][0]
    assert body["scheme"] == "ct" and body["mean"] == pytest.approx(600, abs=5)  # 200 + 400 on its foreground
    view = plans_for_dataset(plans, "body")
    assert view["normalisation"] == [body] and view["classes"] == [0, 2]
    with pytest.raises(PlanError, match="name the case's dataset"):
        plans_for_dataset(plans, None)
    with pytest.raises(PlanError, match="dataset 'hip' is not among the plans' datasets"):
        plans_for_dataset(plans, "hip")
    single = {k: v for k, v in plans.items() if k != "datasets"}
    assert plans_for_dataset(single, None) == single
