import json

import numpy as np
import pandas as pd
import pytest

from carve.evaluation.learning_curve import (
    LearningCurveOptions,
    Subset,
    curve_summary,
    curve_table,
    draw_subsets,
    load_subset,
    model_seed,
    usable_sizes,
    write_learning_curve,
    write_subsets,
)

TRAIN = [f"t{i:02d}" for i in range(10)]
TEST = ["x1", "x2"]


def test_options_from_config():
    assert LearningCurveOptions.from_config(None) is None
    assert LearningCurveOptions.from_config({}) is None
    assert LearningCurveOptions.from_config({"sizes": [4, 2]}) == LearningCurveOptions((4, 2), 3)
    assert LearningCurveOptions.from_config({"sizes": [2], "draws": 5}).draws == 5


def test_sizes_leave_one_case_held_out():
    assert usable_sizes([8, 2, 4, 16, 9], 10) == ((2, 4, 8, 9), (16,))
    assert usable_sizes([3, 2, 3], 4) == ((2, 3), ())
    with pytest.raises(ValueError, match="at most 3"):
        usable_sizes([4, 5], 4)
    with pytest.raises(ValueError, match=">= 1"):
        usable_sizes([0, 2], 4)


def test_subsets_are_nested_disjoint_from_evaluation_and_sized():
    subsets = draw_subsets(TRAIN, TEST, [8, 2, 4], draws=3, seed=0)
    assert [(s.n, s.draw) for s in subsets] == [(n, d) for d in range(3) for n in (2, 4, 8)]
    for draw in range(3):
        mine = [s for s in subsets if s.draw == draw]
        for small, large in zip(mine, mine[1:], strict=False):
            assert set(small.train) < set(large.train)
        assert len({s.held_out for s in mine}) == 1, "every size of a draw is evaluated on the same cases"
        for s in mine:
            assert len(s.train) == s.n and len(set(s.train)) == s.n
            assert not set(s.train) & set(s.evaluate)
            assert set(s.held_out) == set(TRAIN) - set(mine[-1].train)
            assert len(s.held_out) == 2 and s.test == tuple(TEST)
            assert set(s.train) | set(s.held_out) <= set(TRAIN)


def test_subsets_reproducible_order_free_and_seeded():
    a = draw_subsets(TRAIN, TEST, [2, 4], 4, seed=7)
    assert a == draw_subsets(TRAIN[::-1], TEST[::-1], [4, 2], 4, seed=7)
    assert a != draw_subsets(TRAIN, TEST, [2, 4], 4, seed=8)
    assert len({s.train for s in a if s.n == 4}) > 1, "draws pick different cases"
    # more draws keep the earlier ones; the training subsets do not depend on the other sizes
    more = draw_subsets(TRAIN, TEST, [2, 4], 6, seed=7)
    assert more[: len(a)] == a
    other = draw_subsets(TRAIN, TEST, [2, 4, 6], 4, seed=7)
    assert [s.train for s in other if s.n in (2, 4)] == [s.train for s in a]


def test_subset_refusals():
    with pytest.raises(ValueError, match="draws"):
        draw_subsets(TRAIN, TEST, [2], 0, seed=0)
    with pytest.raises(ValueError, match="both"):
        draw_subsets(TRAIN, ["t01"], [2], 1, seed=0)
    with pytest.raises(ValueError, match="unique"):
        draw_subsets(["a", "a", "b"], [], [1], 1, seed=0)


def test_model_seed_deterministic_and_distinct():
    seeds = {model_seed(0, n, d) for n in (2, 4, 8) for d in range(5)}
    assert len(seeds) == 15
    assert model_seed(3, 4, 1) == model_seed(3, 4, 1) != model_seed(4, 4, 1)
    assert all(0 <= s < 2**31 for s in seeds)


def test_write_and_load_subsets(tmp_path):
    path = tmp_path / "draw1.json"
    subsets = write_subsets(path, TRAIN[:5], TEST, [2, 4, 8], 1, seed=1)
    document = json.loads(path.read_text())
    assert document["sizes"] == [2, 4] and document["draw"] == 1 and document["nested"] is True
    assert subsets == draw_subsets(TRAIN[:5], TEST, [2, 4], 2, seed=1)[2:]
    assert load_subset(path, 4, 1) == subsets[1]
    assert document["subsets"][1]["model_seed"] == model_seed(1, 4, 1)
    with pytest.raises(ValueError, match="n=2, draw 0"):
        load_subset(path, 2, 0)


def test_set_of():
    s = Subset(2, 0, ("a", "b"), ("c",), ("x",))
    assert s.evaluate == ("c", "x")
    assert s.set_of("c") == "held_out" and s.set_of("x") == "test"
    with pytest.raises(KeyError):
        s.set_of("a")


def _cases(rows):
    columns = ["n", "draw", "case", "set", "label", "label_value", "dice", "iou", "nsd", "hd95_mm"]
    return pd.DataFrame(rows, columns=columns)


def _two_label_rows(n, draw, case, organ, lobe):
    return [
        [n, draw, case, "test", "organ", 1, organ, organ, organ, 1.0],
        [n, draw, case, "test", "lobe", 2, lobe, lobe, lobe, np.inf],
    ]


def test_curve_table_means_per_label_and_foreground():
    rows = _two_label_rows(2, 0, "a", 0.6, 0.2) + _two_label_rows(2, 0, "b", 0.8, np.nan)
    rows += _two_label_rows(4, 0, "a", 0.9, 0.5)
    curve = curve_table(_cases(rows))
    assert list(curve["label"][:3]) == ["organ", "lobe", "mean_foreground"]
    row = curve[(curve["n"] == 2) & (curve["label"] == "organ")].iloc[0]
    assert row["cases"] == 2 and row["dice_mean"] == pytest.approx(0.7)
    assert row["dice_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    lobe = curve[(curve["n"] == 2) & (curve["label"] == "lobe")].iloc[0]
    assert lobe["cases"] == 2 and lobe["dice_mean"] == pytest.approx(0.2) and np.isnan(lobe["dice_sd"])
    assert np.isnan(lobe["hd95_mm_mean"]), "infinite distances are left out"
    fg = curve[(curve["n"] == 2) & (curve["label"] == "mean_foreground")].iloc[0]
    assert fg["dice_mean"] == pytest.approx((0.4 + 0.8) / 2)
    assert len(curve) == 6
    with pytest.raises(ValueError, match="draw"):
        curve_table(_cases(rows).drop(columns="draw"))


def test_curve_summary_over_draws():
    rows = []
    for draw, dice in enumerate((0.5, 0.7, 0.9)):
        rows += _two_label_rows(2, draw, "a", dice, dice)
        rows += _two_label_rows(4, draw, "a", 0.95, 0.95)
    summary = curve_summary(curve_table(_cases(rows)))
    assert list(summary["label"]) == ["organ", "organ", "lobe", "lobe", "mean_foreground", "mean_foreground"]
    organ2 = summary.iloc[0]
    assert organ2["n"] == 2 and organ2["draws"] == 3
    assert organ2["dice_mean"] == pytest.approx(0.7) and organ2["dice_sd"] == pytest.approx(0.2)
    assert organ2["dice_min"] == pytest.approx(0.5) and organ2["dice_max"] == pytest.approx(0.9)
    assert summary.iloc[1]["dice_sd"] == pytest.approx(0.0)


def test_write_learning_curve_files_and_determinism(tmp_path):
    paths = []
    rng = np.random.default_rng(0)
    for n in (2, 3):
        for draw in range(2):
            rows = []
            for case in ("a", "b"):
                rows += _two_label_rows(n, draw, case, *rng.uniform(0, 1, 2))
            path = tmp_path / f"n{n}_draw{draw}.tsv"
            _cases(rows).to_csv(path, sep="\t", index=False)
            paths.append(path)
    outs = [tmp_path / "lc.tsv", tmp_path / "summary.tsv", tmp_path / "lc.png"]
    curve = write_learning_curve(paths, *outs)
    table = pd.read_csv(outs[0], sep="\t")
    assert len(table) == 2 * 2 * 3 and set(table["n"]) == {2, 3} and set(table["draw"]) == {0, 1}
    assert table["dice_mean"].between(0, 1).all()
    pd.testing.assert_frame_equal(table, curve, check_dtype=False, atol=1e-5)
    assert len(pd.read_csv(outs[1], sep="\t")) == 2 * 3
    png = outs[2].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    again = [tmp_path / "again.tsv", tmp_path / "again_summary.tsv", tmp_path / "again.png"]
    write_learning_curve(paths, *again)
    assert again[2].read_bytes() == png
    with pytest.raises(ValueError, match="no model"):
        write_learning_curve([], *outs)
