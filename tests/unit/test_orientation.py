import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from carve.imaging.io import Geometry, read_image, to_sitk, write_image
from carve.imaging.orientation import Reorientation, check_mirror_axes, reorientation, sided_labels, to_canonical
from carve.prediction.predict import prediction_mirror_axes
from carve.training.fold import train_config_from


def signed_permutations():
    """All 48 axis-aligned directions: a permutation of the patient axes and a sign per array axis."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            d = np.zeros((3, 3))
            for a in range(3):
                d[perm[a], a] = signs[a]
            yield d


@pytest.mark.parametrize(
    "direction", list(signed_permutations()), ids=lambda d: "".join(f"{v:+.0f}" for v in d.ravel())
)
def test_every_axis_aligned_grid_becomes_the_identity_with_the_same_voxels_in_space(direction) -> None:
    shape = (3, 4, 5)
    geometry = Geometry((0.7, 1.3, 2.9), (10.0, -20.0, 5.5), tuple(map(tuple, direction)))
    array = np.arange(np.prod(shape)).reshape(shape)
    canonical, grid, turn = to_canonical(array, geometry)
    np.testing.assert_allclose(grid.direction_matrix, np.eye(3), atol=1e-12)
    # every voxel keeps its value and its place in patient space
    own = np.argwhere(np.ones(shape, bool))
    new = np.argwhere(np.ones(canonical.shape, bool))
    own_points = {
        tuple(np.round(p, 6)): array[tuple(i)] for p, i in zip(geometry.index_to_world(own), own, strict=True)
    }
    new_points = {
        tuple(np.round(p, 6)): canonical[tuple(i)] for p, i in zip(grid.index_to_world(new), new, strict=True)
    }
    assert own_points == new_points
    np.testing.assert_array_equal(turn.from_canonical(canonical), array)
    assert sorted(grid.spacing_mm) == sorted(geometry.spacing_mm)


def test_identity_grid_is_left_alone_and_channels_are_kept() -> None:
    array = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    canonical, grid, turn = to_canonical(array, Geometry((1.0, 2.0, 3.0)))
    assert turn.is_identity and canonical is array and grid == Geometry((1.0, 2.0, 3.0))
    flipped = Reorientation((2, 0, 1), (True, False, True))
    back = flipped.from_canonical(flipped.to_canonical(array))
    assert flipped.to_canonical(array).shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_oblique_grid_gets_the_nearest_permutation(oblique_geometry) -> None:
    # the oblique fixture is ~17 degrees from the identity; stored with axes reversed and one flipped
    d = oblique_geometry.direction_matrix[:, [2, 1, 0]] * np.array([1.0, -1.0, 1.0])
    turn = reorientation(Geometry((1.0, 1.0, 1.0), direction=tuple(map(tuple, d))))
    assert turn == Reorientation((2, 1, 0), (False, True, False))
    grid = turn.geometry(Geometry((1.0, 1.0, 1.0), direction=tuple(map(tuple, d))), (4, 4, 4))
    np.testing.assert_allclose(grid.direction_matrix, oblique_geometry.direction_matrix, atol=1e-12)


def test_canonical_geometry_matches_itks_dicom_orient() -> None:
    """ITK's own reorientation (DICOMOrient to LPS: identity direction) agrees with carve's on a real-looking
    RAS-stored grid: same array, same geometry."""
    ras = Geometry((1.2, 0.9, 3.0), (4.0, 5.0, -6.0), ((0, -1, 0), (0, 0, -1), (1, 0, 0)))
    array = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    canonical, grid, _ = to_canonical(array, ras)
    itk = sitk.DICOMOrient(to_sitk(array, ras), "LPS")
    itk_array = sitk.GetArrayFromImage(itk)
    itk_geometry = Geometry.from_sitk(itk)
    # ITK's identity direction is carve's axes reversed (array order z, y, x): compare in patient space
    np.testing.assert_array_equal(np.transpose(itk_array, (2, 1, 0)), canonical)
    np.testing.assert_allclose(itk_geometry.origin_mm, grid.origin_mm, atol=1e-9)


def test_side_words_in_label_names_forbid_mirroring_on_their_axis() -> None:
    hippocampus = {1: "anterior", 2: "posterior"}
    assert sided_labels(hippocampus, 1) == hippocampus and sided_labels(hippocampus, 0) == {}
    assert check_mirror_axes([0, 2], hippocampus) == (0, 2)
    with pytest.raises(ValueError, match="axis 1 \\(anterior-posterior\\) would swap labels"):
        check_mirror_axes([1], hippocampus)
    kidneys = {1: "kidney_left", 2: "Kidney R", 3: "liver", 4: "lobe"}
    assert sided_labels(kidneys, 0) == {1: "kidney_left", 2: "Kidney R"}
    with pytest.raises(ValueError, match="right-left"):
        check_mirror_axes([0], kidneys)
    with pytest.raises(ValueError, match="canonical array axes"):
        check_mirror_axes([3], kidneys)


def test_prediction_flips_only_what_training_flipped() -> None:
    assert prediction_mirror_axes({"mirror_axes": [0, 2]}) == (0, 2)
    assert prediction_mirror_axes({"mirror_axes": []}) == ()
    assert prediction_mirror_axes({"mirror_axes": [0, 2]}, (2,)) == (2,)
    with pytest.raises(ValueError, match="axes \\[1\\] that training never flipped"):
        prediction_mirror_axes({"mirror_axes": [0, 2]}, (1, 2))


PLANS = {
    "channels": [{"name": "image", "modality": "MR"}],
    "n_classes": 3,
    "batch_size": 2,
    "patch_size": [8, 8, 8],
    "target_spacing_mm": [1.0, 1.0, 1.0],
    "network": {
        "base_channels": 4,
        "max_channels": 8,
        "strides": [[1, 1, 1], [2, 2, 2]],
        "kernel_sizes": [[3, 3, 3]] * 2,
    },
}


def test_training_flips_come_from_the_plans_alone() -> None:
    options = {"epochs": 1, "time_budget_min": None}
    PLANS["training"] = {"iterations": 50}
    assert train_config_from({**PLANS, "mirror_axes": []}, options, 0).augment.p_mirror == 0.0
    mirrored = train_config_from({**PLANS, "mirror_axes": [0]}, options, 0).augment
    assert mirrored.mirror_axes == (0,) and mirrored.p_mirror == 0.5
    with pytest.raises(ValueError, match="plan.mirror_axes"):
        train_config_from({**PLANS, "mirror_axes": []}, {**options, "augment": {"p_mirror": 0.5}}, 0)


def stored_geometry(turn: Reorientation, canonical: Geometry, canonical_shape) -> Geometry:
    """The geometry of a scan stored so that ``turn`` brings it to the ``canonical`` grid."""
    direction, spacing = np.zeros((3, 3)), [0.0, 0.0, 0.0]
    for j, p in enumerate(turn.permutation):
        direction[:, p] = canonical.direction_matrix[:, j] * (-1.0 if turn.flips[j] else 1.0)
        spacing[p] = canonical.spacing_mm[j]
    corner = [n - 1 if f else 0 for n, f in zip(canonical_shape, turn.flips, strict=True)]
    origin = canonical.index_to_world(np.asarray([corner]))[0]
    return Geometry(tuple(spacing), tuple(origin), tuple(map(tuple, direction)))


def test_a_model_segments_the_same_voxels_whatever_the_storage_order(tmp_path) -> None:
    """One scan stored three ways (as trained, permuted and flipped, and LPS-sorted like a DICOM series): the
    predictions agree voxel for voxel once brought onto one grid by ITK (independent of carve's reorientation)."""
    import torch

    from carve.prediction.predict import PredictOptions, predict_case
    from carve.training.network import NetworkConfig, UNet3D, save_model

    torch.manual_seed(0)
    config = NetworkConfig(1, 3, 4, 8, ((1, 1, 1), (2, 2, 2)), ((3, 3, 3), (3, 3, 3)), deep_supervision=False)
    model = UNet3D(config)
    with torch.no_grad():
        model.heads[-1].weight.mul_(20.0)
    save_model(tmp_path / "fold_0.pt", model, config, {})
    plans = {
        "normalisation": [{"scheme": "zscore_per_image"}],
        "target_spacing_mm": [1.0, 1.5, 2.0],
        "patch_size": [8, 8, 8],
        "n_classes": 3,
        "labels": {"1": "anterior", "2": "posterior"},
        "mirror_axes": [],
    }
    rng = np.random.default_rng(3)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.normal(size=(10, 12, 9)), 1.5).astype(np.float32)
    trained = Geometry((1.0, 1.5, 2.0), (3.0, -4.0, 5.0))  # the canonical grid itself
    stored = {"as_trained": (image, trained)}
    turns = {
        "permuted_flipped": Reorientation((2, 0, 1), (True, False, True)),
        "ras_slices_first": Reorientation((2, 1, 0), (True, True, False)),  # a RAS-stored NIfTI of an axial scan
    }
    for name, turn in turns.items():
        geometry = stored_geometry(turn, trained, image.shape)
        assert reorientation(geometry) == turn
        stored[name] = (turn.from_canonical(image), geometry)
    labels = {}
    for name, (array, geometry) in stored.items():
        write_image(tmp_path / f"{name}.nii.gz", array, geometry)
        out = [tmp_path / name / f for f in ("labels.nii.gz", "entropy.nii.gz", "scores.tsv")]
        predict_case(
            name,
            tmp_path / f"{name}.nii.gz",
            [tmp_path / "fold_0.pt"],
            plans,
            *out,
            options=PredictOptions(precision="fp32"),
        )
        predicted, geometry_out = read_image(out[0])
        assert predicted.shape == array.shape and geometry_out.is_close(geometry, 1e-4, array.shape)
        # onto the trained grid by ITK, nearest neighbour
        reference = to_sitk(np.zeros(image.shape, np.uint8), trained)
        moved = sitk.Resample(to_sitk(predicted, geometry_out), reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        labels[name] = sitk.GetArrayFromImage(moved)
    assert len(np.unique(labels["as_trained"])) > 1
    for name in turns:
        np.testing.assert_array_equal(labels[name], labels["as_trained"], err_msg=name)
