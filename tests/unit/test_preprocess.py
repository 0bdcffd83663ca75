import numpy as np
import pytest

from carve.imaging.io import Geometry, write_image
from carve.planning.preprocess import load_case, normalise, preprocess_case, preprocess_image


def test_zscore_and_ct_normalisation():
    image = np.random.default_rng(0).normal(100, 20, (8, 8, 8)).astype(np.float32)
    z = normalise(image, {"scheme": "zscore_per_image"})
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    ct = normalise(np.array([[[-2000.0, 0.0, 3000.0]]]), {"scheme": "ct", "clip": [-100, 200], "mean": 50, "std": 10})
    np.testing.assert_allclose(ct.ravel(), [-15, -5, 15])
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(image, {"scheme": "magic"})


def test_preprocess_resamples_to_plan_spacing_and_round_trips(tmp_path, oblique_geometry):
    plans = {"normalisation": [{"scheme": "zscore_per_image"}], "target_spacing_mm": [1.25, 1.6, 0.9], "n_classes": 3}
    image = np.random.default_rng(1).normal(size=(12, 30, 32)).astype(np.float32)
    axes = [np.arange(n) * s for n, s in zip(image.shape, oblique_geometry.spacing_mm, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    labels = (((z - 15) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) < 8**2).astype(np.uint8)
    labels[0:2, 0:3, 0:3] = 2
    write_image(tmp_path / "i.nii.gz", image, oblique_geometry)
    write_image(tmp_path / "l.nii.gz", labels, oblique_geometry)
    shape, geometry = preprocess_case(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz", plans, tmp_path / "c.npz")
    assert shape == (24, 15, 32)
    data, lab, g = load_case(tmp_path / "c.npz")
    assert data.shape == (1, 24, 15, 32) and data.dtype == np.float32
    assert lab.shape == shape and set(np.unique(lab)) == {0, 1, 2}
    np.testing.assert_allclose(g.spacing_mm, (1.25, 1.6, 0.9))
    np.testing.assert_allclose(g.direction_matrix, oblique_geometry.direction_matrix, atol=1e-6)
    # the foreground volume is preserved within a few percent
    vol_before = (labels == 1).sum() * np.prod(oblique_geometry.spacing_mm)
    vol_after = (lab == 1).sum() * np.prod(g.spacing_mm)
    assert abs(vol_after / vol_before - 1) < 0.05


def test_preprocess_image_without_label_shape():
    plans = {"normalisation": [{"scheme": "zscore_per_image"}], "target_spacing_mm": [2.0, 2.0, 2.0]}
    data, g = preprocess_image(np.zeros((4, 8, 8), np.float32) + 3, Geometry((4.0, 1.0, 1.0)), plans)
    assert data.shape == (1, 8, 4, 4)
    np.testing.assert_allclose(data, 0.0, atol=1e-5)


def _stored_case(tmp_path, shape=(2, 7, 9, 11)):
    from carve.planning.preprocess import save_case

    image = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    geometry = Geometry((1.0, 2.5, 0.7), (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    save_case(tmp_path / "case_01.npz", image, geometry, np.zeros(shape[1:], np.uint8))
    return tmp_path / "case_01.npz", image


def test_map_case_image_maps_the_stored_bytes_read_only(tmp_path):
    from carve.planning.preprocess import map_case_image
    from carve.training.sampling import PatchSampler

    path, image = _stored_case(tmp_path)
    mapped = map_case_image(path)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, image)
    with pytest.raises(ValueError):
        mapped[0, 0, 0, 0] = 1.0
    # a sampler over the mapped image draws exactly the patches of the image in memory
    zeros = np.broadcast_to(np.zeros((), np.uint8), image.shape[1:])
    a = PatchSampler([(image, zeros)], (4, 5, 6), 2, 0.0, np.random.default_rng(0)).sample(6)
    b = PatchSampler([(mapped, zeros)], (4, 5, 6), 2, 0.0, np.random.default_rng(0)).sample(6)
    assert type(b[0]) is np.ndarray
    np.testing.assert_array_equal(a[0], b[0])


def test_map_case_image_reads_a_compressed_member_and_refuses_a_truncated_file(tmp_path):
    from carve.errors import InputError
    from carve.planning.preprocess import map_case_image

    image = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.savez_compressed(tmp_path / "other.npz", image=image)  # written by something else
    read = map_case_image(tmp_path / "other.npz")
    assert not isinstance(read, np.memmap)
    np.testing.assert_array_equal(read, image)

    path, _ = _stored_case(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.npz: not a readable preprocessed case"):
        map_case_image(tmp_path / "cut.npz")
    np.savez(tmp_path / "nolabel.npz", label=np.zeros(3, np.uint8))
    with pytest.raises(InputError, match="nolabel.npz: not a readable preprocessed case"):
        map_case_image(tmp_path / "nolabel.npz")
