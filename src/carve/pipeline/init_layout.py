"""`carve init`: the cases of a folder of images and labels, and the sheet and config that describe them.

Three layouts are recognised:

* nnU-Net: ``imagesTr/CASE_0000.nii.gz`` (one file per channel, numbered from 0000), ``labelsTr/CASE.nii.gz``,
  optional ``imagesTs/`` (test cases; ``labelsTs/`` when present) and ``dataset.json``;
* Medical Segmentation Decathlon (MSD): ``imagesTr/CASE.nii.gz`` (several channels: one 4D file),
  ``labelsTr/CASE.nii.gz``, optional ``imagesTs/`` and ``dataset.json``;
* plain: ``images/`` and ``labels/`` with matching names.

``dataset.json`` gives the label names (``{"background": 0, "anterior": 1}`` of nnU-Net v2, or the older
``{"0": "background", "1": "anterior"}``) and the channels (``channel_names``, or the older ``modality``).
Every problem names the file it is about.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carve.imaging.io import IMAGE_SUFFIXES
from carve.pipeline.run_config import RESERVED_LABEL_NAMES
from carve.pipeline.sheet import check_case_id

NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # label and channel names (config schema)
MAX_CHANNEL_NAME = 32
DEFAULT_FOLDS = 5  # the config schema's default
LAYOUT_NAMES = {"nnunet": "nnU-Net", "msd": "Medical Segmentation Decathlon", "plain": "plain (images/, labels/)"}


class LayoutError(ValueError):
    """A folder whose cases cannot be listed (the message names the file or folder)."""


@dataclass(frozen=True)
class FoundCase:
    case: str
    images: tuple[Path, ...]  # nnU-Net: one file per channel, in channel order; else the one (maybe 4D) file
    label: Path | None
    role: str  # "train" or "test"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says (empty when there is none)."""

    labels: dict[int, str] | None = None
    channels: tuple[str, ...] = ()  # the channel names as written there, in channel order
    path: Path | None = None


@dataclass(frozen=True)
class Found:
    layout: str  # "nnunet", "msd" or "plain"
    folder: Path
    cases: tuple[FoundCase, ...]
    n_channels: int
    info: DatasetInfo

    @property
    def train(self) -> list[FoundCase]:
        return [c for c in self.cases if c.role == "train"]

    @property
    def test(self) -> list[FoundCase]:
        return [c for c in self.cases if c.role == "test"]


# ---------------------------------------------------------------------------------------------------- files


def image_stem(name: str) -> str | None:
    """The name without its image suffix (``.nii.gz``, ``.nrrd``...), or None when it is no image file."""
    lower = name.lower()
    return next((name[: -len(s)] for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted; hidden files (``.x``, macOS ``._x``) are skipped."""
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and image_stem(p.name) is not None
    )


def _by_stem(files: Iterable[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        stem = image_stem(path.name)
        assert stem is not None
        if stem in found:
            raise LayoutError(f"{path}: same name as {found[stem].name}; keep one of them")
        found[stem] = path
    return found


def _check_case(case: str, path: Path) -> None:
    if (msg := check_case_id(case)) is not None:
        raise LayoutError(f"{path}: case id '{case}': {msg}; rename the file")


# ---------------------------------------------------------------------------------------------------- dataset.json


def clean_name(name: str, fallback: str, limit: int | None = None) -> str:
    """A label or channel name the config accepts: other characters become '_' (``non-enhancing tumor`` ->
    ``non-enhancing_tumor``); ``fallback`` when nothing usable is left."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name).strip()).strip("_-")
    cleaned = cleaned[:limit] if limit else cleaned
    return cleaned if NAME.match(cleaned) else fallback


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def parse_dataset_labels(labels: Any, where: str) -> dict[int, str]:
    """Label value -> name from ``dataset.json`` ``labels``, either form; background (0) dropped."""
    if not isinstance(labels, Mapping) or not labels:
        raise LayoutError(f"{where}: `labels` is not a mapping of names and values")
    pairs: list[tuple[int, str]] = []
    if all(str(k).strip().isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        pairs = [(int(k), str(v)) for k, v in labels.items()]  # older form: {"0": "background", "1": "anterior"}
    else:
        for name, value in labels.items():  # nnU-Net v2: {"background": 0, "anterior": 1}
            if isinstance(value, list | tuple):
                raise LayoutError(
                    f"{where}: label '{name}' is a region {list(value)} (nnU-Net region-based training); carve "
                    "needs one value per label: give --labels 1=name,2=name"
                )
            if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
                raise LayoutError(f"{where}: label '{name}' has value {value!r}, not a whole number")
            pairs.append((int(value), str(name)))
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values):
        raise LayoutError(f"{where}: a label value is given twice in `labels`")
    pairs = sorted((v, n) for v, n in pairs if v != 0)
    if not pairs:
        raise LayoutError(f"{where}: `labels` names only the background")
    names = _unique([_unreserved(clean_name(n, f"label_{v}")) for v, n in pairs])
    return {v: n for (v, _), n in zip(pairs, names, strict=True)}


def _unreserved(name: str) -> str:
    """A label name the config refuses because a column of the mean over labels has it (``foreground``) gets
    ``_label`` appended (``foreground_label``), so that a dataset.json naming its one label so still initialises."""
    return f"{name}_label" if name.lower() in RESERVED_LABEL_NAMES else name


def read_dataset_json(folder: Path) -> DatasetInfo:
    path = folder / "dataset.json"
    if not path.is_file():
        return DatasetInfo()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: not a JSON object")
    labels = parse_dataset_labels(data["labels"], str(path)) if data.get("labels") is not None else None
    block = data.get("channel_names") or data.get("modality") or {}
    if not isinstance(block, Mapping) or not all(str(k).strip().isdigit() for k in block):
        raise LayoutError(f"{path}: `channel_names`/`modality` is not a mapping of channel numbers to names")
    channels = tuple(str(block[k]) for k in sorted(block, key=lambda k: int(k)))
    return DatasetInfo(labels=labels, channels=channels, path=path)


def channel_names(found: Found) -> list[str]:
    """Config names of the channels (from dataset.json, else ch0, ch1...); empty for one channel."""
    if found.n_channels < 2:
        return []
    given = found.info.channels if len(found.info.channels) == found.n_channels else ()
    names = [clean_name(n, f"ch{i}", MAX_CHANNEL_NAME) for i, n in enumerate(given)] or [
        f"ch{i}" for i in range(found.n_channels)
    ]
    return _unique(names)


def modality_of(name: str) -> str:
    """carve's normalisation for a dataset.json channel name: CT for 'CT', else MR (per-image z-score, as
    nnU-Net does for every other channel)."""
    return "CT" if name.strip().upper() == "CT" else "MR"


# ---------------------------------------------------------------------------------------------------- layouts


def _labels_for(
    images: Mapping[str, tuple[Path, ...]], labels_dir: Path | None, required: bool
) -> dict[str, Path | None]:
    """The label of each case by name in ``labels_dir``; a missing one is refused when ``required``, a label
    without an image always."""
    labels = _by_stem(image_files(labels_dir)) if labels_dir is not None and labels_dir.is_dir() else {}
    out: dict[str, Path | None] = {}
    for case, files in images.items():
        out[case] = labels.get(case)
        if out[case] is None and required:
            where = labels_dir if labels_dir is not None else files[0].parent
            raise LayoutError(f"{files[0]} has no label: expected {case}{_suffix(files[0])} in {where}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        image_dir = next(iter(images.values()))[0].parent if images else None
        raise LayoutError(f"{labels[orphans[0]]} is a label without an image in {image_dir}")
    return out


def _suffix(path: Path) -> str:
    """The image suffix of a file name (``.nii.gz``...)."""
    return path.name[len(image_stem(path.name) or path.stem) :]


def _nnunet_images(folder: Path) -> tuple[dict[str, tuple[Path, ...]], int]:
    """case -> its channel files in order, and the number of channels (the same for every case)."""
    groups: dict[str, dict[int, Path]] = {}
    for path in image_files(folder):
        stem = image_stem(path.name) or ""
        match = NNUNET_CHANNEL.match(stem)
        if match is None:
            raise LayoutError(f"{path}: not named CASE_XXXX (nnU-Net: a four-digit channel number, e.g. _0000)")
        channels = groups.setdefault(match["case"], {})
        if int(match["channel"]) in channels:
            raise LayoutError(f"{path}: same case and channel as {channels[int(match['channel'])].name}")
        channels[int(match["channel"])] = path
    out: dict[str, tuple[Path, ...]] = {}
    n_channels = None
    for case, channels in sorted(groups.items()):
        files = tuple(channels[k] for k in sorted(channels))
        _check_case(case, files[0])
        if sorted(channels) != list(range(len(channels))):
            numbers = ", ".join(f"{k:04d}" for k in sorted(channels))
            raise LayoutError(f"{files[0]}: case '{case}' has channels {numbers}; they must run 0000, 0001, ...")
        if n_channels is not None and len(files) != n_channels:
            raise LayoutError(f"{files[0]}: case '{case}' has {len(files)} channel file(s), others {n_channels}")
        n_channels = len(files)
        out[case] = files
    return out, n_channels or 1


def _single_images(folder: Path) -> dict[str, tuple[Path, ...]]:
    out = {}
    for case, path in sorted(_by_stem(image_files(folder)).items()):
        _check_case(case, path)
        out[case] = (path,)
    return out


def _is_nnunet(images_dir: Path, labels_dir: Path, info: DatasetInfo) -> bool:
    """nnU-Net when every image name ends in a channel number and the labels are named without it (an MSD case
    may be called ``x_0001`` too: the labels decide)."""
    stems = [image_stem(p.name) or "" for p in image_files(images_dir)]
    matches = [NNUNET_CHANNEL.match(s) for s in stems]
    if not stems or not all(matches):
        return False
    if not labels_dir.is_dir():
        return True
    labels = {image_stem(p.name) for p in image_files(labels_dir)}
    nnunet = sum(m["case"] in labels for m in matches if m is not None)
    msd = sum(s in labels for s in stems)
    return nnunet >= msd


def _n_volumes(path: Path) -> int:
    """Volumes of an image file (4D MSD files hold one per channel); 1 when the header cannot say."""
    if image_stem(path.name) is None or not path.name.lower().endswith((".nii", ".nii.gz")):
        return 1
    import nibabel

    try:
        shape = nibabel.load(path).shape
    except Exception as err:  # an unreadable header: the workflow's converter names the problem later
        raise LayoutError(f"{path}: cannot be read as NIfTI ({err})") from None
    return int(shape[3]) if len(shape) >= 4 else 1


def find_dataset(folder: str | os.PathLike) -> Found:
    """The cases of ``folder`` in the nnU-Net, MSD or plain layout; raises :class:`LayoutError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(f"{folder}: not a folder")
    info = read_dataset_json(folder)
    if (folder / "imagesTr").is_dir():
        images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
        layout = "nnunet" if _is_nnunet(images_dir, labels_dir, info) else "msd"
        test_dir, test_labels = folder / "imagesTs", folder / "labelsTs"
    elif (folder / "images").is_dir():
        images_dir, labels_dir, layout = folder / "images", folder / "labels", "plain"
        test_dir = test_labels = None
    else:
        raise LayoutError(
            f"{folder}: no imagesTr/ (nnU-Net or Medical Segmentation Decathlon layout) or images/ and labels/ "
            "(plain layout) in it"
        )
    if not labels_dir.is_dir():
        raise LayoutError(f"{labels_dir}: not found; the {LAYOUT_NAMES[layout]} layout keeps the labels there")
    if layout == "nnunet":
        train, n_channels = _nnunet_images(images_dir)
    else:
        train = _single_images(images_dir)
        n_channels = len(info.channels) if len(info.channels) > 1 else 1
    if not train:
        raise LayoutError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    train_labels = _labels_for(train, labels_dir, True)
    cases = [FoundCase(c, files, train_labels[c], "train") for c, files in train.items()]
    if test_dir is not None and test_dir.is_dir():
        if layout == "nnunet":
            test, n_test = _nnunet_images(test_dir)
            if test and n_test != n_channels:
                raise LayoutError(f"{test_dir}: {n_test} channel(s) per case, imagesTr has {n_channels}")
        else:
            test = _single_images(test_dir)
        clash = sorted(set(test) & set(train))
        if clash:
            raise LayoutError(f"{test[clash[0]][0]}: case '{clash[0]}' is also a training case in {images_dir}")
        labels = _labels_for(test, test_labels, False)
        cases += [FoundCase(c, f, labels[c], "test") for c, f in test.items()]
    if layout == "msd" and n_channels == 1:
        n_channels = _n_volumes(cases[0].images[0])
    return Found(layout, folder, tuple(cases), n_channels, info)


# ---------------------------------------------------------------------------------------------------- labels


def parse_labels_option(text: str) -> dict[int, str]:
    """``1=anterior,2=posterior`` -> {1: 'anterior', 2: 'posterior'}."""
    labels: dict[int, str] = {}
    for item in (s.strip() for s in text.split(",")):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1 or not NAME.match(name.strip()):
            raise LayoutError(
                f"--labels: '{item}' is not VALUE=NAME (VALUE 1, 2, ...; NAME letters, digits, '_', '-'), "
                "e.g. --labels 1=anterior,2=posterior"
            )
        if int(value) in labels:
            raise LayoutError(f"--labels: value {int(value)} given twice")
        labels[int(value)] = name.strip()
    if len(set(labels.values())) != len(labels):
        raise LayoutError(f"--labels: names must be unique, got {text}")
    return labels


def label_values(paths: Iterable[Path]) -> list[int]:
    """The label values (> 0) found in the label files (NIfTI read with nibabel, others with SimpleITK)."""
    import numpy as np

    values: set[int] = set()
    for path in paths:
        try:
            if path.name.lower().endswith((".nii", ".nii.gz")):
                import nibabel

                data = np.asanyarray(nibabel.load(path).dataobj)
            else:
                import SimpleITK as sitk

                data = sitk.GetArrayViewFromImage(sitk.ReadImage(str(path)))
        except Exception as err:
            raise LayoutError(f"{path}: cannot be read as a label image ({err})") from None
        found = np.unique(data)
        whole = np.rint(found)
        if not np.allclose(found, whole, atol=1e-3) or (whole < 0).any():
            raise LayoutError(f"{path}: label values {found[:5].tolist()}... are not whole numbers >= 0")
        values |= {int(v) for v in whole if v > 0}
    return sorted(values)


# ---------------------------------------------------------------------------------------------------- writing


def _path_text(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies below it, else absolute."""
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base))
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def sheet_text(found: Found, sheet: Path, channels: Sequence[str]) -> str:
    """The cases sheet (TSV): image paths relative to the sheet when the data lies below it, else absolute."""
    base = Path(sheet).parent
    separate = found.layout == "nnunet" and len(channels) > 1
    header = ["case", "image", "label", "role"] + ([f"image_{n}" for n in channels] if separate else [])
    rows = ["\t".join(header)]
    for case in found.cases:
        fields = [case.case, _path_text(case.images[0], base)]
        fields += [_path_text(case.label, base) if case.label is not None else "", case.role]
        if separate:
            fields += [_path_text(p, base) for p in case.images]
        if any(("\t" in f or "\n" in f) for f in fields):
            raise LayoutError(f"{case.images[0]}: a tab or line break in a path; a TSV sheet cannot hold it")
        rows.append("\t".join(fields))
    return "\n".join(rows) + "\n"


def _q(value: str) -> str:
    """A YAML scalar that stays a string (``on``, ``1`` or ``null`` as names would not)."""
    return json.dumps(value)


def _line(text: str, comment: str, column: int = 34) -> str:
    return f"{text.ljust(column - 1)} # {comment}"


def config_text(
    found: Found,
    *,
    cases: str,
    results: str,
    labels: Mapping[int, str],
    labels_from: str,
    modality: str,
    modality_from: str,
    channels: Sequence[str],
    config_name: str,
) -> str:
    """A starting config: the keys a user must set, with comments (the rest keep the schema's defaults)."""
    n_train, n_test = len(found.train), len(found.test)
    lines = [
        f"# carve configuration written by `carve init` from {found.folder}",
        f"# ({LAYOUT_NAMES[found.layout]} layout: {n_train} training and {n_test} test cases).",
        f"# Run it:  carve run --configfile {config_name}",
        "# Every other key, its default and its meaning: workflow/schemas/config.schema.yaml",
        "",
        _line(f"cases: {_q(cases)}", "the cases sheet (case, image, label, role), relative to where you run"),
        _line(f"results: {_q(results)}", "every output of the run goes below this folder"),
        "",
        _line("labels:", f"label value -> name (background 0 is implicit); {labels_from}"),
        *(f"  {v}: {_q(labels[v])}" for v in sorted(labels)),
        "",
        _line(f"modality: {modality}", f"MR (z-score per image), CT (clip + z-score) or other; {modality_from}"),
    ]
    if channels:
        source = "the image_<name> columns of the sheet" if found.layout == "nnunet" else "the 4D images' volumes"
        lines += ["", _line("channels:", f"the input channels in order, from {source}")]
        given = found.info.channels if len(found.info.channels) == len(channels) else ("",) * len(channels)
        for name, original in zip(channels, given, strict=True):
            lines.append(f"  - {{name: {_q(name)}, modality: {modality_of(original) if original else modality}}}")
    folds = min(DEFAULT_FOLDS, n_train)
    lines += [""]
    if folds < DEFAULT_FOLDS:
        lines += [_line(f"folds: {folds}", "k-fold cross-validation: at most one fold per training case")]
    else:
        lines += [_line(f"# folds: {DEFAULT_FOLDS}", "k-fold cross-validation (at most the training cases)")]
    lines += [
        _line(
            "# train: {time_budget_min: 60}", "minutes per fold, fixed as iterations when planned (or iterations: N)"
        ),
        _line("# device: auto", "auto (CUDA when present), cpu or cuda"),
    ]
    return "\n".join(lines) + "\n"
