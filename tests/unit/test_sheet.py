import pytest

from carve.pipeline.sheet import SheetError, check_folds, load_sheet


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


def test_series_column_and_channel_columns(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "t2.nii.gz").write_bytes(b"x")
    sheet = write_sheet(
        tmp_path,
        [["a", "study", "lab.nii.gz", "train", "", "T1.*", ""], ["b", "img.nii.gz", "lab.nii.gz", "train", "", "", ""]],
        header="case\timage\tlabel\trole\timage_T1\tseries_T1\timage_T2",
    )
    cases = load_sheet(sheet, channels=("T1", "T2"))
    a, b = cases
    assert a.channel_images == (tmp_path / "study", tmp_path / "study") and a.series == ("T1.*", None)
    assert a.sources == (tmp_path / "study",)
    assert b.channel_images == (tmp_path / "img.nii.gz",) * 2 and b.series == ()
    sheet.write_text(
        "case\timage\tlabel\trole\timage_T2\tseries\n"
        "a\t\tlab.nii.gz\ttrain\tt2.nii.gz\t\n"
        "b\timg.nii.gz\tlab.nii.gz\ttrain\t\t1.2.840.99\n"
    )
    with pytest.raises(SheetError, match=r"case 'a': channel 'T1' has no image \(neither image_T1 nor image given\)"):
        load_sheet(sheet, channels=("T1", "T2"))
    # one channel: the `series` column is the per-row choice, image_<name> columns play no part
    sheet.write_text(sheet.read_text().replace("a\t\tlab", "a\timg.nii.gz\tlab"))
    a, b = load_sheet(sheet)
    assert a.channel_images == () and a.series == () and b.series == ("1.2.840.99",)


def test_series_choice_uid_or_pattern_and_bad_regex(tmp_path):
    from carve.pipeline.sheet import series_choice

    assert series_choice("1.2.840.10008.5") == ("1.2.840.10008.5", None)
    assert series_choice("T1 MPRAGE") == (None, "T1 MPRAGE")
    assert series_choice("  ") == (None, None)
    sheet = write_sheet(
        tmp_path, [["a", "img.nii.gz", "lab.nii.gz", "train", "T1(["]], header="case\timage\tlabel\trole\tseries"
    )
    with pytest.raises(SheetError, match=r"case 'a': column series: 'T1\(\[' is neither a SeriesInstanceUID"):
        load_sheet(sheet)
    sheet = write_sheet(
        tmp_path, [["a", "img.nii.gz", "lab.nii.gz", "train", "1.2.3"]], header="case\timage\tlabel\trole\tseries"
    )
    assert load_sheet(sheet)[0].series == ("1.2.3",)


def test_duplicate_channel_names_refused(tmp_path):
    sheet = write_sheet(tmp_path, [["a", "img.nii.gz", "lab.nii.gz", "train"]])
    with pytest.raises(SheetError, match="duplicate channel name"):
        load_sheet(sheet, channels=("T1", "T1"))


def test_cases_from_a_folder_of_scans(tmp_path):
    from carve.pipeline.sheet import cases_from_folder

    (tmp_path / "scan_a.nii.gz").write_bytes(b"x")
    (tmp_path / "scan_b.nrrd").write_bytes(b"x")
    (tmp_path / "dicom_c").mkdir()
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"x")
    cases = cases_from_folder(tmp_path)
    assert [(c.case, c.image.name, c.role, c.label) for c in cases] == [
        ("dicom_c", "dicom_c", "test", None),
        ("scan_a", "scan_a.nii.gz", "test", None),
        ("scan_b", "scan_b.nrrd", "test", None),
    ]
    (tmp_path / "scan_a.nii").write_bytes(b"x")
    (tmp_path / "bad name.nii.gz").write_bytes(b"x")
    with pytest.raises(SheetError) as err:
        cases_from_folder(tmp_path)
    assert "bad name.nii.gz: case id must be" in str(err.value)
    assert "case id 'scan_a' also given by scan_a.nii" in str(err.value)
    with pytest.raises(SheetError, match="no image files or DICOM folders"):
        cases_from_folder(tmp_path / "dicom_c")


def test_dataset_column_names_a_configured_dataset(tmp_path):
    header = "case\timage\tlabel\trole\tdataset"
    sheet = write_sheet(
        tmp_path, [("a", "img.nii.gz", "lab.nii.gz", "train", "knee"), ("b", "img.nii.gz", "", "test", "ankle")], header
    )
    cases = load_sheet(sheet, datasets=["knee", "ankle"])
    assert [c.dataset for c in cases] == ["knee", "ankle"]
    bad = write_sheet(
        tmp_path, [("a", "img.nii.gz", "lab.nii.gz", "train", "hip"), ("b", "img.nii.gz", "", "test", "")], header
    )
    with pytest.raises(SheetError) as err:
        load_sheet(bad, datasets=["knee", "ankle"])
    assert "row 2, case 'a': column dataset: dataset 'hip'; the config's datasets are knee, ankle" in str(err.value)
    assert "row 3, case 'b': column dataset: no dataset" in str(err.value)
    with pytest.raises(SheetError, match="row 2, case 'a': column dataset names 'hip', but the config defines no"):
        load_sheet(bad)
