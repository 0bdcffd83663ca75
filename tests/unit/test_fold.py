import numpy as np
import pytest

from carve.imaging.io import Geometry
from carve.planning.preprocess import save_case
from carve.training.fold import load_preprocessed


def test_load_preprocessed_checks_every_name_first(tmp_path):
    geometry = Geometry((2.0, 1.0, 1.0))
    paths = []
    for i, name in enumerate(("a", "b", "c")):
        image = np.full((1, 2, 3, 4), i, np.float32)
        save_case(tmp_path / f"{name}.npz", image, geometry, np.full((2, 3, 4), i, np.uint8))
        paths.append(tmp_path / f"{name}.npz")
    train, val = load_preprocessed(paths, (["c", "a"], ["b"]), "splits.json: fold 0")
    assert [int(img[0, 0, 0, 0]) for img, _ in train] == [2, 0] and int(val[0][1][0, 0, 0]) == 1
    with pytest.raises(ValueError, match=r"^splits.json: fold 1 names cases without preprocessed data: \['x', 'y'\]$"):
        load_preprocessed(paths, (["a", "x"], ["y"]), "splits.json: fold 1")
