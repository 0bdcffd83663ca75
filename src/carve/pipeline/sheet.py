"""The cases sheet: one row per case with ``case``, ``image``, ``label`` and ``role``.

Roles: ``train`` (labelled; trained on and cross-validated), ``test`` (segmented; evaluated where it has a label)
and ``unlabelled`` (an image without a label that only semi-supervised training reads: converted and
preprocessed like the others, never segmented nor evaluated; config ``semi_supervised``).

Optional columns: ``series`` (which DICOM series of the ``image`` folder to use: a SeriesInstanceUID or a
SeriesDescription regular expression); ``dataset`` (which of the config's ``datasets`` the case belongs to, when
one network learns several). With several input channels (config ``channels``), ``image_<name>``
gives a channel its own file or folder (else it comes from ``image``: a study folder or a 4D file) and
``series_<name>`` its own series choice.

Paths are relative to the sheet. Every problem of a sheet is reported at once, one line each, with the
row, the case and the column, before any job runs.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from carve.errors import CarveError

REQUIRED_COLUMNS = ("case", "image", "label", "role")
ROLES = ("train", "test", "unlabelled")  # unlabelled: an image that only semi-supervised training reads
# A case id becomes a file name: keep it to a safe, portable set (no spaces, slashes, '..', shell syntax).
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# carve appends these to case ids (uncertainty/{case}.tsv beside the folder uncertainty/{case}/): an id ending in one
# would clash with another id's files ('b' and 'b.tsv')
OUTPUT_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".gz",
    ".tsv",
    ".json",
    ".npz",
    ".png",
    ".log",
    ".stl",
    ".obj",
    ".ply",
    ".glb",
    ".pt",
)


class SheetError(CarveError, ValueError):
    """A cases sheet with one or more problems (the message lists each on its own line)."""


@dataclass(frozen=True)
class Case:
    case: str
    image: Path
    label: Path | None
    role: str
    channel_images: tuple[Path, ...] = ()  # one source per channel when the config names channels
    series: tuple[str | None, ...] = ()  # the sheet's series choice per channel (None: the config's)
    dataset: str | None = None  # one of the config's datasets (several datasets, one network)

    @property
    def has_label(self) -> bool:
        return self.label is not None

    @property
    def sources(self) -> tuple[Path, ...]:
        """The distinct image sources of the case (one, or one per channel)."""
        return tuple(dict.fromkeys(self.channel_images or (self.image,)))


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def check_case_id(case: str) -> str | None:
    """The problem with a case id, or None when it is safe to use in file names."""
    if not CASE_ID.match(case):
        return (
            "case id must be 1-64 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(no spaces, slashes or shell characters)"
        )
    if ".." in case:
        return "case id must not contain '..'"
    if case.lower().endswith(OUTPUT_SUFFIXES):
        suffix = next(s for s in OUTPUT_SUFFIXES if case.lower().endswith(s))
        return f"case id must not end in a file extension ('{suffix}'): carve appends its own to case ids"
    return None


def load_sheet(path: str | Path, channels: Sequence[str] = (), datasets: Sequence[str] = ()) -> list[Case]:
    """Read and check a cases sheet (TSV); raises :class:`SheetError` listing every problem.

    ``channels`` are the config's channel names (empty: one channel from ``image``); ``datasets`` the config's
    dataset names (then every row names its dataset in the ``dataset`` column)."""
    path = Path(path)
    if len(set(channels)) != len(channels):
        raise SheetError(f"config channels: duplicate channel name(s) in {list(channels)}")
    if not path.is_file():
        raise SheetError(f"{path}: cases sheet not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte order mark is not part of 'case'
    except UnicodeDecodeError as err:
        raise SheetError(f"{path}: is not UTF-8 text ({err}); save the sheet as UTF-8") from None
    if not text.strip():
        raise SheetError(
            f"{path}: the sheet is empty; it needs a header row: {', '.join(REQUIRED_COLUMNS)} (tab-separated)"
        )
    records = list(csv.reader(io.StringIO(text), delimiter="\t"))
    n_columns = len(records[0])
    wide = [(i, len(r)) for i, r in enumerate(records[1:], start=2) if any(f.strip() for f in r[n_columns:])]
    if wide:  # pandas would take the first column for an index and shift every value by one
        raise SheetError(
            "problems in the cases sheet:\n"
            + "\n".join(f"{path}: row {i}: {n} fields, the header has {n_columns} (a stray tab?)" for i, n in wide)
        )
    try:
        with warnings.catch_warnings():  # fields past the header's are empty here (checked above): drop them quietly
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(
                io.StringIO(text), sep="\t", dtype=str, keep_default_na=False, comment=None, index_col=False
            )
    except pd.errors.ParserError as err:
        raise SheetError(f"{path}: cannot be read as a tab-separated sheet ({err})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        hint = (
            "; it looks comma-separated, carve reads tab-separated sheets"
            if len(df.columns) == 1 and "," in str(df.columns[0])
            else ""
        )
        raise SheetError(
            f"{path}: missing column(s) {', '.join(missing)}; a cases sheet needs {', '.join(REQUIRED_COLUMNS)} "
            f"(found {', '.join(map(str, df.columns)) or 'none'}){hint}"
        )
    base = path.parent  # relative sheet -> paths relative to the working directory: a moved run stays valid
    problems: list[str] = []
    cases: list[Case] = []
    seen: dict[str, int] = {}
    folded: dict[str, tuple[str, int]] = {}  # lower-case id -> first id and row: one file on case-blind file systems
    for i, row in enumerate(df.to_dict("records"), start=2):  # row 1 is the header
        where = f"{path}: row {i}"
        case = str(row["case"]).strip()
        if _blank(case):
            problems.append(f"{where}: empty case id")
            continue
        where = f"{where}, case '{case if case.isprintable() else case.encode('unicode_escape').decode()}'"
        if (msg := check_case_id(case)) is not None:
            problems.append(f"{where}: {msg}")
        if case in seen:
            problems.append(f"{where}: duplicate case id (first on row {seen[case]})")
        elif case.lower() in folded:
            other, row_other = folded[case.lower()]
            problems.append(
                f"{where}: case id differs from '{other}' (row {row_other}) only in upper/lower case; their files "
                "would overwrite each other on case-insensitive file systems (macOS, Windows)"
            )
        seen.setdefault(case, i)
        folded.setdefault(case.lower(), (case, i))
        role = str(row["role"]).strip()
        if role not in ROLES:
            problems.append(f"{where}: role must be one of {', '.join(ROLES)}, got '{role}'")
        image = None if _blank(row["image"]) else (base / str(row["image"]).strip())
        label = None if _blank(row["label"]) else (base / str(row["label"]).strip())
        sources: list[Path] = []
        if channels:
            for name in channels:
                own = row.get(f"image_{name}")
                source = image if _blank(own) else base / str(own).strip()
                if source is None:
                    problems.append(f"{where}: channel '{name}' has no image (neither image_{name} nor image given)")
                elif not source.exists():
                    problems.append(f"{where}: image {source} of channel '{name}' does not exist")
                else:
                    sources.append(source)
            if len(sources) == len(channels):
                image = sources[0]
        elif image is None:
            problems.append(f"{where}: no image given")
        elif not image.exists():
            problems.append(f"{where}: image {image} does not exist")
        series_columns = [f"series_{n}" for n in channels] if channels else ["series"]
        series = tuple(None if _blank(row.get(c)) else str(row[c]).strip() for c in series_columns)
        for column, value in zip(series_columns, series, strict=True):
            if value is not None and (msg := check_series_choice(value)) is not None:
                problems.append(f"{where}: column {column}: {msg}")
        if label is not None and not label.exists():
            problems.append(f"{where}: label {label} does not exist")
        if role == "train" and label is None:
            problems.append(f"{where}: a training case needs a label")
        if role == "unlabelled" and label is not None:
            problems.append(
                f"{where}: an unlabelled case has no label (it is only read by semi-supervised training and never "
                "evaluated); give it role train to train on its label, or test to evaluate against it"
            )
        dataset = None if _blank(row.get("dataset")) else str(row["dataset"]).strip()
        if datasets and dataset not in datasets:
            given = "no dataset" if dataset is None else f"dataset '{dataset}'"
            problems.append(f"{where}: column dataset: {given}; the config's datasets are {', '.join(datasets)}")
        elif not datasets and dataset is not None:
            problems.append(f"{where}: column dataset names '{dataset}', but the config defines no datasets")
        if image is not None and (not channels or len(sources) == len(channels)):
            cases.append(Case(case, image, label, role, tuple(sources), series if any(series) else (), dataset))
    if not problems and not cases:
        problems.append(f"{path}: the sheet has no cases")
    if problems:
        raise SheetError("problems in the cases sheet:\n" + "\n".join(problems))
    return cases


def cases_from_folder(folder: str | Path) -> list[Case]:
    """Test cases from a folder of new scans (inference with a bundle): each image file (NIfTI, NRRD, MHA) and
    each sub-folder (a DICOM series or study) is a case named after it; problems are listed at once."""
    from carve.imaging.io import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise SheetError(f"{folder}: scans folder not found")
    cases, problems = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            case = entry.name
        elif entry.name.lower().endswith(IMAGE_SUFFIXES):
            case = next(entry.name[: -len(s)] for s in IMAGE_SUFFIXES if entry.name.lower().endswith(s))
        else:
            continue
        if (msg := check_case_id(case)) is not None:
            problems.append(f"{entry}: {msg}; rename it")
        cases.append(Case(case, entry, None, "test"))
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case in seen:
            problems.append(f"{c.image}: case id '{c.case}' also given by {seen[c.case].name}")
        seen.setdefault(c.case, c.image)
    if not cases and not problems:
        problems.append(f"{folder}: no image files or DICOM folders in it")
    if problems:
        raise SheetError("problems in the scans folder:\n" + "\n".join(problems))
    return cases


SERIES_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def series_choice(value: str | None) -> tuple[str | None, str | None]:
    """A sheet's series choice as (SeriesInstanceUID, SeriesDescription pattern): digits and dots are a UID."""
    if value is None or not value.strip():
        return None, None
    value = value.strip()
    return (value, None) if SERIES_UID.match(value) else (None, value)


def check_series_choice(value: str) -> str | None:
    uid, pattern = series_choice(value)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            return f"'{value}' is neither a SeriesInstanceUID nor a valid regular expression ({err})"
    return None


def check_folds(cases: list[Case], folds: int, sheet: str | Path = "cases sheet") -> None:
    n_train = sum(c.role == "train" for c in cases)
    if n_train < max(2, folds):
        raise SheetError(
            f"{sheet}: {n_train} training case(s) for {folds} folds; each fold needs at least one held-out "
            f"case and one training case, so give at least {max(2, folds)} training cases or fewer folds"
        )
