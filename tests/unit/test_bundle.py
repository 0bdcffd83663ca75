import json

import pytest
import torch

import carve
from carve.planning.plan import PLANS_VERSION
from carve.prediction.bundle import BundleError, load_bundle, write_bundle
from carve.training.network import NetworkConfig, UNet3D, load_model, save_model

NET = NetworkConfig(in_channels=1, n_classes=2, base_channels=4, max_channels=8,
                    strides=((1, 1, 1), (2, 2, 2)), kernel_sizes=((3, 3, 3), (3, 3, 3)))  # fmt: skip


@pytest.fixture
def run(tmp_path):
    plans = {"plans_version": PLANS_VERSION, "labels": {"1": "organ"}, "channels": [{"name": "T1", "modality": "MR"}]}
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "postprocessing.json").write_text(json.dumps({"organ": ["largest_component"]}))
    (tmp_path / "members.json").write_text(json.dumps({"keep": True, "extra_members": {"mirror_axes": [2]}}))
    models = []
    for k in range(2):
        torch.manual_seed(k)
        save_model(tmp_path / f"m{k}.pt", UNet3D(NET), NET, {"fold": k})
        models.append(tmp_path / f"m{k}.pt")
    out = write_bundle(tmp_path / "bundle", tmp_path / "plans.json", models, tmp_path / "postprocessing.json",
                       {"overlap": 0.25, "mirror_axes": [2]}, tmp_path / "members.json")  # fmt: skip
    return tmp_path, out


def test_bundle_round_trip(run):
    tmp_path, root = run
    bundle = load_bundle(root)
    assert bundle.labels == {1: "organ"} and bundle.channels == ("T1",)
    assert [p.name for p in bundle.models] == ["fold_0.pt", "fold_1.pt"]
    assert bundle.predict == {"overlap": 0.25, "mirror_axes": [2]}
    assert bundle.plans.read_bytes() == (tmp_path / "plans.json").read_bytes()
    assert bundle.members.read_bytes() == (tmp_path / "members.json").read_bytes()  # the decision travels with it
    for k, path in enumerate(bundle.models):  # the weights are the run's, loadable without unpickling code
        a, b = load_model(path)[0].state_dict(), load_model(tmp_path / f"m{k}.pt")[0].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".bundle.")]  # no staging left


def test_missing_fold_altered_file_and_other_version_are_refused(run, monkeypatch):
    _, root = run
    (root / "folds" / "fold_1.pt").rename(root / "fold_1.pt.away")
    with pytest.raises(BundleError, match=r"bundle .*bundle: folds/fold_1.pt is missing \(2 fold\(s\) listed\)"):
        load_bundle(root)
    (root / "fold_1.pt.away").rename(root / "folds" / "fold_1.pt")
    load_bundle(root)
    with open(root / "postprocessing.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(BundleError, match="postprocessing.json differs from its sha256"):
        load_bundle(root)
    load_bundle(root, check_hashes=False)
    (root / "members.json").unlink()
    with pytest.raises(BundleError, match="members.json is missing"):
        load_bundle(root, check_hashes=False)
    monkeypatch.setattr(carve, "__version__", "9.9.9")
    with pytest.raises(BundleError, match=r"written by carve 0\.1\.0, this is carve 9\.9\.9"):
        load_bundle(root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{")
    with pytest.raises(BundleError, match="bundle.json cannot be read"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(BundleError, match="format 'other' version 1"):
        load_bundle(tmp_path)
