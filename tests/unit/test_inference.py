"""Sliding-window ensemble inference: known answers with tiny hand-made models."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from carve.prediction.inference import (
    EnsembleResult,
    gaussian_importance,
    sliding_window_probabilities,
    window_starts,
)

torch.set_num_threads(1)

N_CLASSES = 3
PATCH = (4, 6, 5)  # anisotropic patch (z, y, x)


class Identity(nn.Module):
    """Returns its input as logits: input channels are the classes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class PositionDependent(nn.Module):
    """Logits depend on the position inside the patch (not translation equivariant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.linspace(-3.0, 3.0, x.shape[2]).view(1, 1, -1, 1, 1)
        ramp = torch.cat([z, -z, 0.5 * z], dim=1)[:, : x.shape[1]]
        return x + ramp


class Constant(nn.Module):
    """Predicts one fixed class everywhere, confidently."""

    def __init__(self, label: int, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.label = label
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], self.n_classes, *x.shape[2:]))
        out[:, self.label] = 20.0
        return out


def one_hot_image(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=shape)
    image = (np.eye(N_CLASSES, dtype=np.float32)[labels] * 10.0).transpose(3, 0, 1, 2)
    return np.ascontiguousarray(image), labels


def run(models, image, **kw) -> EnsembleResult:
    return sliding_window_probabilities(models, image, PATCH, n_classes=N_CLASSES, **kw)


def test_gaussian_importance_peak_and_floor() -> None:
    g = gaussian_importance(PATCH)
    assert g.shape == PATCH and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0)
    assert g[2, 3, 2] == pytest.approx(1.0)  # centre at i // 2
    assert g.min() > 0
    assert g[0, 0, 0] < g[1, 2, 2] < g[2, 3, 2]
    assert gaussian_importance((64, 64, 64)).min() == pytest.approx(1e-4)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(4, 6, 5), (11, 17, 5), (9, 6, 23), (4, 40, 7)])
def test_window_starts_cover_every_voxel_and_last_is_flush(shape, overlap) -> None:
    starts = window_starts(shape, PATCH, overlap)
    covered = np.zeros(shape, dtype=int)
    for st in starts:
        covered[tuple(slice(s, s + p) for s, p in zip(st, PATCH, strict=True))] += 1
    assert covered.min() >= 1
    assert len(set(starts)) == len(starts)
    for axis in range(3):
        per_axis = sorted({st[axis] for st in starts})
        assert per_axis[0] == 0
        assert per_axis[-1] == shape[axis] - PATCH[axis]
        steps = np.diff(per_axis)
        assert (steps <= max(1, int(np.ceil(PATCH[axis] * (1 - overlap))))).all()


def test_window_starts_small_volume_and_no_overlap() -> None:
    assert window_starts((2, 3, 5), PATCH, 0.5) == [(0, 0, 0)]
    assert window_starts((8, 6, 5), PATCH, 0.0) == [(0, 0, 0), (4, 0, 0)]
    with pytest.raises(ValueError, match="overlap"):
        window_starts((8, 6, 5), PATCH, 1.0)


SHAPES = [(2, 3, 4), (4, 6, 5), (9, 13, 11), (3, 6, 12), (10, 4, 5)]  # smaller, equal, larger, mixed


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("shape", SHAPES)
def test_identity_model_reproduces_argmax(shape, overlap) -> None:
    image, labels = one_hot_image(shape)
    result = run([Identity()], image, overlap=overlap, batch_windows=3)
    assert result.mean_probabilities.shape == (N_CLASSES, *shape)
    assert result.mean_probabilities.dtype == np.float32
    assert result.mean_entropy.shape == shape and result.std.shape == (N_CLASSES, *shape)
    assert result.n_members == 1
    np.testing.assert_array_equal(result.mean_probabilities.argmax(0), labels)
    # identity softmax of one-hot * 10 is the same in every window: fusion must reproduce it exactly
    expected = torch.softmax(torch.from_numpy(image), dim=0).numpy()
    np.testing.assert_allclose(result.mean_probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(result.std, 0.0, atol=0)


def test_mirroring_equivariant_model_gives_same_result() -> None:
    image, labels = one_hot_image((9, 13, 11), seed=1)
    plain = run([Identity()], image)
    mirrored = run([Identity()], image, mirror_axes=(0, 1, 2))
    assert mirrored.n_members == 8
    np.testing.assert_allclose(mirrored.mean_probabilities, plain.mean_probabilities, atol=1e-6)
    np.testing.assert_array_equal(mirrored.mean_probabilities.argmax(0), labels)
    np.testing.assert_allclose(mirrored.std, 0.0, atol=1e-6)


def test_mirroring_flips_output_back() -> None:
    """A model that is not mirror-equivariant: flipped members differ, so std > 0 and sums stay 1."""
    image, _ = one_hot_image((9, 13, 11), seed=2)
    result = run([PositionDependent()], image, mirror_axes=(0,), overlap=0.5)
    assert result.n_members == 2
    assert result.std.max() > 1e-3
    np.testing.assert_allclose(result.mean_probabilities.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 4), (13, 9, 12)])
def test_position_dependent_model_is_finite_and_normalised(shape) -> None:
    image, _ = one_hot_image(shape, seed=3)
    result = run([PositionDependent()], image * 0.1, overlap=0.5, mirror_axes=(1, 2))
    for array in (result.mean_probabilities, result.mean_entropy, result.std):
        assert np.isfinite(array).all()
    np.testing.assert_allclose(result.mean_probabilities.sum(0), 1.0, atol=1e-5)
    assert (result.mean_probabilities >= 0).all()
    assert (result.mean_entropy >= 0).all() and (result.mean_entropy <= np.log(N_CLASSES) + 1e-5).all()


def test_two_identical_models_have_zero_std_and_mutual_information() -> None:
    image, _ = one_hot_image((7, 8, 9), seed=4)
    model = nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1)
    twin = nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1)
    twin.load_state_dict(model.state_dict())
    result = run([model, twin], image * 0.1)
    single = run([model], image * 0.1)
    assert result.n_members == 2
    np.testing.assert_array_equal(result.std, 0.0)
    np.testing.assert_allclose(result.mean_probabilities, single.mean_probabilities, atol=1e-6)
    entropy = -(result.mean_probabilities * np.log(result.mean_probabilities)).sum(0)
    assert entropy.max() > 0.1  # not trivially confident
    np.testing.assert_allclose(entropy - result.mean_entropy, 0.0, atol=1e-5)  # mutual information


def test_disagreeing_models_have_std_where_they_disagree() -> None:
    image, _ = one_hot_image((6, 7, 8), seed=5)
    result = run([Constant(1), Constant(2)], image, mirror_axes=(2,))
    assert result.n_members == 4
    p = result.mean_probabilities
    np.testing.assert_allclose(p[1], 0.5, atol=1e-6)
    np.testing.assert_allclose(p[2], 0.5, atol=1e-6)
    np.testing.assert_allclose(result.std[1], 0.5, atol=1e-5)  # members at 0 and 1: population std 0.5
    np.testing.assert_allclose(result.std[0], 0.0, atol=1e-6)  # both agree background is absent
    np.testing.assert_allclose(result.mean_entropy, 0.0, atol=1e-5)  # each member is confident


def test_member_label_maps_are_each_members_argmax() -> None:
    image, _ = one_hot_image((6, 7, 8), seed=5)
    result = run([Constant(1), Constant(2)], image, mirror_axes=(2,), member_labels=True)
    assert [m.dtype for m in result.member_labels] == [np.uint8] * 4
    assert [int(np.unique(m)[0]) for m in result.member_labels] == [1, 1, 2, 2]  # model-major, flips inside
    assert all(m.shape == (6, 7, 8) for m in result.member_labels)
    assert run([Constant(1)], image).member_labels == ()  # off by default


def test_member_statistic_sees_each_members_probabilities() -> None:
    image, _ = one_hot_image((6, 7, 3), seed=5)  # smaller than the patch along x: padded, then cropped back
    torch.manual_seed(0)
    models = [nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1) for _ in range(2)]
    result = run(models, image, mirror_axes=(2,), member_statistic=lambda p: p.copy())
    members = np.stack(result.member_statistics)
    assert members.shape == (4, N_CLASSES, 6, 7, 3) and result.n_members == 4
    np.testing.assert_allclose(members.sum(1), 1.0, atol=1e-5)  # each member's probabilities, not the running mean
    np.testing.assert_allclose(members.mean(0), result.mean_probabilities, atol=1e-6)
    alone = run(models[:1], image, member_statistic=lambda p: p.copy())
    np.testing.assert_allclose(alone.member_statistics[0], alone.mean_probabilities, atol=1e-6)
    assert run(models[:1], image).member_statistics == ()  # none asked


def test_std_matches_explicit_members() -> None:
    """Running (Welford) statistics equal those of stored member maps."""
    image, _ = one_hot_image((5, 9, 7), seed=6)
    torch.manual_seed(0)
    models = [nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1) for _ in range(3)]
    result = run(models, image * 0.2, overlap=0.5)
    members = np.stack([run([m], image * 0.2, overlap=0.5).mean_probabilities for m in models])
    np.testing.assert_allclose(result.mean_probabilities, members.mean(0), atol=1e-6)
    np.testing.assert_allclose(result.std, members.std(0), atol=1e-5)
    entropies = -(members * np.log(np.clip(members, 1e-30, 1))).sum(1)
    np.testing.assert_allclose(result.mean_entropy, entropies.mean(0), atol=1e-5)
    # the labels' std alone (what rule predict writes): the same bytes for classes 1.., the rest unchanged
    labels_only = run(models, image * 0.2, overlap=0.5, foreground_std_only=True)
    assert result.std_first_class == 0 and labels_only.std_first_class == 1
    assert labels_only.std.shape == (N_CLASSES - 1, *result.std.shape[1:])
    np.testing.assert_array_equal(labels_only.std, result.std[1:])
    np.testing.assert_array_equal(labels_only.mean_probabilities, result.mean_probabilities)
    np.testing.assert_array_equal(labels_only.mean_entropy, result.mean_entropy)


def test_half_precision_output_and_conv_model_ensemble() -> None:
    image, _ = one_hot_image((5, 6, 7), seed=7)
    result = run([nn.Conv3d(N_CLASSES, N_CLASSES, 1)], image, half_precision_output=True)
    assert result.mean_probabilities.dtype == np.float16 and result.std.dtype == np.float16
    assert result.mean_entropy.dtype == np.float32
    np.testing.assert_allclose(result.mean_probabilities.astype(np.float32).sum(0), 1.0, atol=1e-2)


def test_padding_value_reaches_the_model() -> None:
    """A volume smaller than the patch is padded with the per-channel minimum, then cropped back."""
    seen: list[torch.Tensor] = []

    class Recorder(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return super().forward(x)

    image, labels = one_hot_image((2, 6, 5), seed=8)
    image = image - 3.0  # minimum -3
    result = run([Recorder()], image)
    assert seen[0].shape == (1, N_CLASSES, *PATCH)
    assert float(seen[0][0, :, 0].min()) == pytest.approx(-3.0)  # padded slab
    np.testing.assert_array_equal(result.mean_probabilities.argmax(0), labels)


def test_clear_errors() -> None:
    image, _ = one_hot_image((4, 6, 5))
    with pytest.raises(ValueError, match="logits of shape"):
        sliding_window_probabilities([Identity()], image, PATCH, n_classes=2)
    with pytest.raises(ValueError, match=r"\(C, z, y, x\)"):
        run([Identity()], image[0])
    with pytest.raises(ValueError, match="mirror_axes"):
        run([Identity()], image, mirror_axes=(3,))
    with pytest.raises(ValueError, match="at least one model"):
        run([], image)


def test_all_mirror_combinations_are_members() -> None:
    calls: list[int] = []

    class Counter(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return super().forward(x)

    image, _ = one_hot_image((4, 6, 5))
    result = run([Counter(), Counter()], image, mirror_axes=(0, 2))
    assert result.n_members == 2 * len(list(itertools.product([0, 1], repeat=2)))
    assert sum(calls) == result.n_members  # one window per member


def test_projections_multiply_the_members() -> None:
    from carve.prediction.projection import radial_projections

    calls: list[int] = []

    class Counter(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return super().forward(x)

    image, labels = one_hot_image((9, 13, 11), seed=9)
    result = run([Counter(), Counter()], image, mirror_axes=(1,), projections=radial_projections(2))
    assert result.n_members == 2 * 2 * 3
    assert sum(calls) == result.n_members * len(window_starts((9, 13, 11), PATCH, 0.5))
    np.testing.assert_allclose(result.mean_probabilities.sum(0), 1.0, atol=1e-5)
    # random one-hot labels have borders everywhere: the projected members disagree with the plain ones
    assert result.std.max() > 0.1


def _tiny_model(path, seed: int) -> None:
    from carve.training.network import NetworkConfig, UNet3D, save_model

    torch.manual_seed(seed)
    config = NetworkConfig(
        in_channels=1,
        n_classes=3,
        base_channels=2,
        max_channels=4,
        strides=((1, 1, 1), (1, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        deep_supervision=False,
    )
    model = UNet3D(config)
    with torch.no_grad():
        model.heads[-1].weight.mul_(20.0)  # more confident than at random initialisation
    save_model(path, model, config, {})


def test_predict_case_writes_every_map_on_the_case_grid(tmp_path, oblique_geometry) -> None:
    from scipy import ndimage

    from carve.imaging.io import read_image, write_image
    from carve.prediction.postprocess import apply_postprocessing
    from carve.prediction.predict import PredictOptions, map_names, predict_case

    shape = (6, 12, 14)
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)
    write_image(tmp_path / "image.nii.gz", image, oblique_geometry)
    models = [tmp_path / f"fold_{k}.pt" for k in range(2)]
    for k, path in enumerate(models):
        _tiny_model(path, seed=k)
    plans = {
        "normalisation": [{"scheme": "zscore_per_image"}],
        "target_spacing_mm": [2.5, 1.6, 1.8],  # half the case's in-plane resolution
        "patch_size": [4, 4, 6],
        "n_classes": 3,
        "labels": {"1": "organ", "2": "vessel"},
        "mirror_axes": [2],  # trained with flips on canonical axis 2: prediction flips it too
    }
    options = PredictOptions(overlap=0.5, projections=1, precision="fp32")
    rows, labels = [], []
    plan = {1: ("largest_component",), 2: ("largest_component", "fill_holes")}
    for name, postprocessing in (("raw", None), ("post", plan)):
        out = [tmp_path / name / f for f in ("labels.nii.gz", "entropy.nii.gz", "scores.tsv")]
        rows.append(
            predict_case(
                "c",
                tmp_path / "image.nii.gz",
                models,
                plans,
                *out,
                options=options,
                postprocessing=postprocessing,
                out_maps=tmp_path / name / "maps",
            )  # fmt: skip
        )
        labels.append(read_image(out[0])[0])
    assert rows[0] == rows[1]  # the scores describe the raw prediction
    assert rows[0]["members"] == 2 * 2 * 2 and rows[0]["foreground_voxels"] > 0
    assert {"mean_std_organ", "mean_std_vessel"} <= set(rows[0])
    expected = [rows[0][f"predicted_dice_{name}"] for name in ("organ", "vessel")]  # plan grid, higher = safer
    assert all(0.0 <= d <= 1.0 for d in expected)
    assert rows[0]["predicted_dice_foreground"] == pytest.approx(np.mean(expected))
    agreement = [rows[0][f"pairwise_dice_{name}"] for name in ("organ", "vessel")]  # 8 members' label maps
    assert all(0.0 <= a <= 1.0 for a in agreement) and rows[0]["pairwise_dice_foreground"] == pytest.approx(
        np.mean(agreement)
    )
    np.testing.assert_array_equal(labels[1], apply_postprocessing(labels[0], plan))
    assert 0 in labels[0] and len(np.unique(labels[0])) > 1 and labels[0].max() <= 2
    own = [rows[0][f"member_predicted_dice_{name}"] for name in ("organ", "vessel")]  # mean of 8 members' own
    assert all(0.0 <= d <= 1.0 for d in own) and rows[0]["member_predicted_dice_foreground"] == pytest.approx(
        np.mean(own)
    )
    assert 0.0 <= rows[0]["mean_member_entropy"] <= rows[0]["mean_normalised_entropy"]  # entropy of a mean is larger
    out = [tmp_path / "one" / f for f in ("labels.nii.gz", "entropy.nii.gz", "scores.tsv")]
    own_grid = {"mirror_axes": [], "target_spacing_mm": list(oblique_geometry.spacing_mm)}  # no resampling
    one = predict_case("c", tmp_path / "image.nii.gz", models[:1], plans | own_grid, *out)
    assert one["members"] == 1  # as a cross-validation case: the member scores are the ensemble's
    assert one["member_predicted_dice_foreground"] == pytest.approx(one["predicted_dice_foreground"], abs=1e-6)
    assert one["mean_member_entropy"] == pytest.approx(one["mean_normalised_entropy"], abs=1e-4)
    # on another grid, interpolating the member's probabilities raises their entropy (it is concave), while the
    # member entropy is interpolated as it is: the ensemble's entropy is then larger even for one member
    one = predict_case("c", tmp_path / "image.nii.gz", models[:1], plans | {"mirror_axes": []}, *out)
    assert one["mean_member_entropy"] < one["mean_normalised_entropy"]

    maps = {n: read_image(tmp_path / "raw" / "maps" / f"{n}.nii.gz") for n in map_names({1: "organ", 2: "vessel"})}
    maps["entropy"] = read_image(tmp_path / "raw" / "entropy.nii.gz")
    for name, (array, geometry) in maps.items():
        assert array.shape == shape and geometry.is_close(oblique_geometry, 1e-4, shape), name
    confidence = maps["confidence"][0]
    assert confidence.dtype == np.uint8 and confidence.min() >= 255 // 3 and confidence.max() > 255 // 3 + 20
    entropy, mi = maps["entropy"][0], maps["mutual_information"][0]
    assert entropy.dtype == np.float32 and 0 <= entropy.min() and entropy.max() <= 1
    assert entropy.max() > 0.3  # not everywhere confident
    assert 0 <= mi.min() and mi.max() <= np.log(3) and mi.max() > 0
    assert np.corrcoef(confidence.ravel(), entropy.ravel())[0, 1] < -0.6  # confident where the entropy is low
    for label in ("organ", "vessel"):
        std = maps[f"std_{label}"][0]
        assert 0 <= std.min() and std.max() <= 0.5 and std.max() > 0
    scores = pd.read_csv(tmp_path / "raw" / "scores.tsv", sep="\t")
    assert scores.loc[0, "case"] == "c" and scores.loc[0, "members"] == 8
    assert scores.loc[0, "predicted_dice_foreground"] == pytest.approx(rows[0]["predicted_dice_foreground"])


def _naive_member(model: nn.Module, image: np.ndarray, overlap: float, flip: tuple[int, ...] = ()) -> np.ndarray:
    """One member's fused probabilities, computed the plain way: every window's (mirrored on ``flip``, the result
    flipped back) Gaussian-weighted softmax added into a whole-volume array, divided by the summed weights (no
    padding: the image is at least one patch)."""
    gaussian = gaussian_importance(PATCH).astype(np.float64)
    total = np.zeros((N_CLASSES, *image.shape[1:]))
    weights = np.zeros(image.shape[1:])
    for start in window_starts(image.shape[1:], PATCH, overlap):
        window = tuple(slice(s, s + p) for s, p in zip(start, PATCH, strict=True))
        dims = tuple(a + 2 for a in flip)
        with torch.no_grad():
            logits = model(torch.flip(torch.from_numpy(image[(slice(None), *window)][None]), dims))
            logits = torch.flip(logits, dims)[0]
        total[(slice(None), *window)] += torch.softmax(logits.double(), 0).numpy() * gaussian
        weights[window] += gaussian
    return total / weights


@pytest.mark.parametrize("overlap", [0.5, 0.8])
def test_rows_streamed_through_a_patch_deep_buffer_give_the_whole_volume_result(overlap) -> None:
    """Without projections each member is folded in row of windows by row (buffers one patch deep): the same
    bytes as the whole-volume path, and the plain fusion of every window, also where several rows overlap."""
    image, _ = one_hot_image((13, 9, 7), seed=8)  # 13 > 4: several rows of windows along z
    image *= 0.3
    torch.manual_seed(1)
    models = [PositionDependent(), nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1)]
    kw = {"overlap": overlap, "mirror_axes": (0,), "member_labels": True}
    streamed = run(models, image, **kw)
    whole = run(models, image, member_statistic=lambda p: None, **kw)  # a member statistic needs whole maps
    assert len(window_starts(image.shape[1:], PATCH, overlap)) > 2 * 2 * 2
    for name in ("mean_probabilities", "std", "mean_entropy"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name), err_msg=name)
    assert all(np.array_equal(a, b) for a, b in zip(streamed.member_labels, whole.member_labels, strict=True))
    members = [_naive_member(m, image, overlap) for m in models]
    members += [_naive_member(m, image, overlap, flip=(0,)) for m in models]
    np.testing.assert_allclose(streamed.mean_probabilities, np.mean(members, 0), atol=1e-5)
    np.testing.assert_allclose(streamed.std, np.std(members, 0), atol=1e-5)
    assert [m.dtype for m in streamed.member_labels] == [np.uint8] * 4
    np.testing.assert_array_equal(streamed.member_labels[0], members[0].argmax(0))


def test_without_uncertainty_the_mean_alone_is_kept() -> None:
    image, _ = one_hot_image((9, 8, 6), seed=9)
    torch.manual_seed(2)
    models = [nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1) for _ in range(2)]
    full = run(models, image * 0.2, mirror_axes=(1,))
    mean_only = run(models, image * 0.2, mirror_axes=(1,), uncertainty=False)
    assert mean_only.std is None and mean_only.mean_entropy is None and mean_only.n_members == 4
    np.testing.assert_array_equal(mean_only.mean_probabilities, full.mean_probabilities)


@pytest.mark.parametrize("shape", [(13, 9, 7), (3, 9, 7)])  # several rows; a volume thinner than the patch (padded)
def test_a_member_accumulator_streams_and_gives_each_members_whole_volume_statistic(shape) -> None:
    """predict's per-member predicted Dice added slab by slab while the member streams: what the whole-volume
    statistic gives, member by member, without the whole map; the ensemble's maps are the streamed bytes."""
    from functools import partial

    from carve.evaluation.failure import PredictedDiceSums, predicted_dice

    image, _ = one_hot_image(shape, seed=11)
    image *= 0.3
    torch.manual_seed(3)
    models = [PositionDependent(), nn.Conv3d(N_CLASSES, N_CLASSES, kernel_size=1)]
    kw = {"overlap": 0.5, "mirror_axes": (0,)}
    streamed = run(models, image, member_accumulator=partial(PredictedDiceSums, N_CLASSES), **kw)
    whole = run(models, image, member_statistic=predicted_dice, **kw)
    plain = run(models, image, **kw)
    assert len(streamed.member_statistics) == 4
    for got, expected in zip(streamed.member_statistics, whole.member_statistics, strict=True):
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    assert len({round(s["predicted_dice_foreground"], 9) for s in streamed.member_statistics}) > 1  # members differ
    np.testing.assert_array_equal(streamed.mean_probabilities, plain.mean_probabilities)
    np.testing.assert_array_equal(streamed.std, plain.std)
    with pytest.raises(ValueError, match="not both"):
        run(models, image, member_statistic=predicted_dice, member_accumulator=partial(PredictedDiceSums, 3))


def test_predicted_dice_sums_over_parts_equal_the_whole() -> None:
    from carve.evaluation.failure import PredictedDiceSums, predicted_dice

    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 4, 6)).transpose(3, 0, 1, 2).astype(np.float32)
    sums = PredictedDiceSums(3, {1: "a", 2: "b"})
    for z in ((0, 2), (2, 3), (3, 5)):
        sums.add(p[:, z[0] : z[1]])
    whole = predicted_dice(p, {1: "a", 2: "b"})
    assert sums.result() == pytest.approx(whole, rel=1e-12)
    assert set(whole) == {"predicted_dice_a", "predicted_dice_b", "predicted_dice_foreground"}
    with pytest.raises(ValueError, match=r"\(3, z, y, x\)"):
        sums.add(p[:2])
