import pytest

from carve.sheet import SheetError, check_folds, load_sheet


def write_sheet(tmp_path, rows, header="case\timage\tlabel\trole"):
    (tmp_path / "img.nii.gz").write_bytes(b"x")
    (tmp_path / "lab.nii.gz").write_bytes(b"x")
    sheet = tmp_path / "cases.tsv"
    sheet.write_text(header + "\n" + "\n".join("\t".join(r) for r in rows) + "\n")
    return sheet


def test_valid_sheet_resolves_paths_relative_to_sheet(tmp_path):
    sheet = write_sheet(tmp_path, [("a1", "img.nii.gz", "lab.nii.gz", "train"), ("b", "img.nii.gz", "", "test")])
    cases = load_sheet(sheet)
    assert [c.case for c in cases] == ["a1", "b"]
    assert cases[0].image == tmp_path / "img.nii.gz"
    assert cases[1].label is None and not cases[1].has_label


@pytest.mark.parametrize(
    "row, message",
    [
        (("a b", "img.nii.gz", "lab.nii.gz", "train"), "case id must be"),
        (("../x", "img.nii.gz", "lab.nii.gz", "train"), "case id must"),
        (("a;rm", "img.nii.gz", "lab.nii.gz", "train"), "case id must be"),
        (("é", "img.nii.gz", "lab.nii.gz", "train"), "case id must be"),
        (("a", "missing.nii.gz", "lab.nii.gz", "train"), "image .*missing.nii.gz does not exist"),
        (("a", "img.nii.gz", "gone.nii.gz", "train"), "label .*gone.nii.gz does not exist"),
        (("a", "img.nii.gz", "", "train"), "training case needs a label"),
        (("a", "", "", "test"), "no image given"),
        (("a", "img.nii.gz", "", "validate"), "role must be one of"),
    ],
)
def test_bad_rows_are_named(tmp_path, row, message):
    sheet = write_sheet(tmp_path, [row])
    with pytest.raises(SheetError, match=message) as err:
        load_sheet(sheet)
    assert "row 2" in str(err.value)


def test_duplicates_and_all_problems_reported_at_once(tmp_path):
    sheet = write_sheet(
        tmp_path,
        [
            ("a", "img.nii.gz", "lab.nii.gz", "train"),
            ("a", "img.nii.gz", "lab.nii.gz", "train"),
            ("c", "no", "", "test"),
        ],
    )
    with pytest.raises(SheetError) as err:
        load_sheet(sheet)
    text = str(err.value)
    assert "duplicate case id (first on row 2)" in text and "row 4, case 'c': image" in text


def test_missing_columns(tmp_path):
    sheet = write_sheet(tmp_path, [("a", "img.nii.gz")], header="case\timage")
    with pytest.raises(SheetError, match="missing column.*label, role"):
        load_sheet(sheet)


def test_too_few_training_cases_for_folds(tmp_path):
    rows = [("a", "img.nii.gz", "lab.nii.gz", "train"), ("b", "img.nii.gz", "lab.nii.gz", "train")]
    sheet = write_sheet(tmp_path, rows)
    cases = load_sheet(sheet)
    check_folds(cases, 2, sheet)
    with pytest.raises(SheetError, match="2 training case.*5 folds"):
        check_folds(cases, 5, sheet)
