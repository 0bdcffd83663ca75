"""carve.prediction.pseudo_labels (self-training's teacher step) and the student fold that reads its folder
(carve.training.fold): files and records, the threshold, and the no-leakage rule at the level of the pipeline's
files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from carve.errors import InputError
from carve.imaging.io import Geometry
from carve.planning.plan import PLANS_VERSION
from carve.planning.preprocess import save_case
from carve.prediction.pseudo_labels import load_pseudo_labels, pseudo_label_images, read_pseudo_label
from carve.training.fold import _student_cases
from carve.training.network import NetworkConfig, UNet3D, save_model
from carve.training.semi_supervised import IGNORE_LABEL

torch.set_num_threads(1)
NET = NetworkConfig(in_channels=1, n_classes=3, base_channels=4, max_channels=8, strides=((1, 1, 1), (2, 2, 2)),
                    kernel_sizes=((3, 3, 3), (3, 3, 3)))  # fmt: skip


@pytest.fixture
def teacher(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    torch.manual_seed(0)
    model = UNet3D(NET)
    save_model(tmp_path / "model.pt", model, NET, {})
    plans = {"plans_version": PLANS_VERSION, "target_spacing_mm": [2.0, 1.0, 1.0], "patch_size": [4, 8, 8],
             "normalisation": [{"scheme": "zscore_per_image"}], "n_classes": 3, "network": {}, "channels": ["image"],
             "mirror_axes": [2], "training": {"precision": "fp32"}}  # fmt: skip
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    images = []
    for i, name in enumerate(("u1", "u0")):
        rng = np.random.default_rng(i)
        save_case(tmp_path / f"{name}.npz", rng.standard_normal((1, 5, 9, 10)).astype(np.float32),
                  Geometry((2.0, 1.0, 1.0)))  # fmt: skip
        images.append(tmp_path / f"{name}.npz")
    return tmp_path / "model.pt", tmp_path / "plans.json", images


def test_a_teacher_fold_writes_masked_pseudo_labels_and_its_record(teacher, tmp_path) -> None:
    model, plans, images = teacher
    out = tmp_path / "pseudo" / "round_0" / "fold_1"
    strict = pseudo_label_images(model, plans, images, out, {"method": "self_training", "confidence_threshold": 0.5},
                                 fold=1, round_index=0, device="cpu")  # fmt: skip
    record, files = load_pseudo_labels(out)
    assert record["fold"] == 1 and record["round"] == 0 and record["mirror_axes"] == [2]
    assert record["confidence_threshold"] == 0.5 and record["precision"] == "fp32"
    assert sorted(files) == ["u0", "u1"] and strict["case"].tolist() == ["u1", "u0"]
    table = pd.read_csv(out / "pseudo_labels.tsv", sep="\t")
    for _, row in table.iterrows():
        labels = read_pseudo_label(files[row["case"]])
        assert labels.shape == (5, 9, 10) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, IGNORE_LABEL}
        assert np.mean(labels != IGNORE_LABEL) == pytest.approx(row["kept_fraction"])
    # a threshold of 0 keeps every voxel; a higher one keeps fewer (an untrained teacher is unsure)
    lax = pseudo_label_images(model, plans, images, tmp_path / "lax", {"confidence_threshold": 0.0}, 1, 0, "cpu")
    assert (lax["kept_fraction"] == 1.0).all() and (strict["kept_fraction"] < 1.0).all()
    with pytest.raises(InputError, match="no unlabelled images"):
        pseudo_label_images(model, plans, [], tmp_path / "none", {}, 1, 0, "cpu")


def test_a_student_reads_only_its_own_folds_teacher(teacher, tmp_path) -> None:
    model, plans, images = teacher
    folder = tmp_path / "round_0" / "fold_0"
    pseudo_label_images(model, plans, images, folder, {"confidence_threshold": 0.0}, 0, 0, "cpu")
    names = {"train": ["a", "b"], "val": ["c"]}
    cases, record = _student_cases(0, names, images, [folder])
    assert record["fold"] == 0 and len(cases) == 2
    assert [c[0].shape for c in cases] == [(1, 5, 9, 10)] * 2 and all(c[1].shape == (5, 9, 10) for c in cases)
    # another fold's teacher saw this fold's validation cases: refused, naming the folder
    with pytest.raises(InputError, match=r"fold_0: teacher fold 1 has no pseudo-labels"):
        _student_cases(1, names, images, [folder])
    with pytest.raises(InputError, match="reads one teacher's pseudo-labels, got 2"):
        _student_cases(0, names, images, [folder, folder])
    # a labelled case is never pseudo-labelled
    with pytest.raises(InputError, match=r"both labelled and pseudo-labelled .*\['u0'\]"):
        _student_cases(0, {"train": ["a", "u0"], "val": ["c"]}, images, [folder])
    with pytest.raises(InputError, match=r"not among the unlabelled: \['u1'\]"):
        _student_cases(0, names, images[1:], [folder])
    with pytest.raises(InputError, match="not a pseudo-label folder"):
        _student_cases(0, names, images, [tmp_path])
