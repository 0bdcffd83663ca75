# Configuration, cases sheet and the functions the rules use to find their inputs.
# Everything is validated here, when the workflow is parsed, before any job runs.
import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from carve.sheet import SheetError, check_folds, load_sheet  # noqa: E402
from carve.demo import demo_cases  # noqa: E402

# YAML gives integer keys for `labels: {1: name}`; JSON schemas speak of string keys.
config["labels"] = {str(k): v for k, v in config.get("labels", {}).items()}
validate(config, "../workflow/schemas/config.schema.yaml", set_default=True)

R = config["results"].rstrip("/")
CHANNELS = [c["name"] for c in config["channels"] or []]
LABELS = {int(k): v for k, v in config["labels"].items()}
DEMO = config.get("demo")


def _load_cases():
    sheet = Path(config["cases"])
    if DEMO is not None:
        return demo_cases(sheet, DEMO.get("n_train", 8), DEMO.get("n_test", 2))
    try:
        cases = load_sheet(sheet, CHANNELS)
        validate(pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False), "../workflow/schemas/cases.schema.yaml")
        check_folds(cases, config["folds"], sheet)
    except SheetError as err:
        raise WorkflowError(str(err)) from None
    return cases


CASES = {c.case: c for c in _load_cases()}
TRAIN = sorted(c for c, v in CASES.items() if v.role == "train")
TEST = sorted(c for c, v in CASES.items() if v.role == "test")
LABELLED_TEST = sorted(c for c in TEST if CASES[c].has_label)
FOLDS = list(range(config["folds"]))


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    case=_alternatives(CASES),
    test_case=_alternatives(TEST),
    train_case=_alternatives(TRAIN),
    fold=r"\d+",


def case_image(wildcards):
    return str(CASES[wildcards.case].image)


def case_sources(wildcards):
    """The distinct image files or folders of a case (one, or one per channel)."""
    return [str(p) for p in CASES[wildcards.case].sources]


def case_channel_sources(wildcards):
    """One source per channel, in channel order (a study folder or 4D file may repeat)."""
    case = CASES[wildcards.case]
    return [str(p) for p in (case.channel_images or (case.image,))]


def case_series(wildcards):
    """The sheet's series choice per channel (empty: the config's)."""
    return list(CASES[wildcards.case].series)


def channel_modalities():
    """(name, modality or None) per configured channel, for the plan."""
    return [[c["name"], c.get("modality")] for c in config["channels"] or []]


def channel_specs():
    """The config's channels as the converter takes them (one unnamed channel by default)."""
    return [
        {k: c.get(k) for k in ("name", "series_uid", "series_description")} for c in (config["channels"] or [{"name": "image"}])
    ]


def case_label(wildcards):
    return str(CASES[wildcards.case].label)


def converted_image(case):
    return f"{R}/nifti/{case}/image.nii.gz"


def converted_label(case):
    return f"{R}/nifti/{case}/label.nii.gz"


def fold_models():
    return expand(f"{R}/models/fold_{{fold}}/model.pt", fold=FOLDS)


def segmentation(case):
    """The prediction of a case: the fold ensemble for test cases, the held-out fold for training cases."""
    return f"{R}/cv/{case}.nii.gz" if CASES[case].role == "train" else f"{R}/predictions/{case}.nii.gz"


def segmentation_of(wildcards):
    return segmentation(wildcards.case)


def evaluation_set(wildcards):
    return "cv" if CASES[wildcards.case].role == "train" else "test"


def case_source_series(wildcards):
    return str(CASES[wildcards.test_case].image)


def dicom_read_options():
    """The options the DICOM reader takes (the export options are not among them)."""
    return {k: v for k, v in config["dicom"].items() if k != "rtstruct"}


def case_reference_dicom(wildcards):
    """Reader options that find the series a test case's prediction lies on (its first channel's series)."""
    from dataclasses import asdict

    from carve.convert import ChannelSpec, DicomOptions

    case = CASES[wildcards.test_case]
    spec = ChannelSpec(**channel_specs()[0])
    return asdict(spec.dicom_options(DicomOptions(**dicom_read_options()), case.series[0] if case.series else None))


def evaluated_cases():
    return TRAIN + LABELLED_TEST


def train_params():
    return dict(config.get("train", {}))


REPORT_FILES = (
    "seeds_table.html",
    "metrics_boxplots.png",
    "uncertainty_vs_dice.png",
    "training_curves.png",
    "configuration.yaml",
    "configuration.html",
)


def all_outputs(manifest=True):
    """Every final output of a run; with ``manifest`` also manifest.json, which records all the others."""
    out = [f"{R}/plans.json", f"{R}/splits.json", f"{R}/metrics/cases.tsv", f"{R}/metrics/summary.tsv"]
    out += fold_models()
    out += [segmentation(c) for c in CASES]
    out += [f"{R}/uncertainty/{c}.nii.gz" for c in CASES]
    out += [f"{R}/meshes/{c}" for c in CASES]
    dicom_tests = [c for c in TEST if CASES[c].image.is_dir() or DEMO is not None]
    out += [f"{R}/dicom/{c}/segmentation.seg.dcm" for c in dicom_tests]
    if config["dicom"].get("rtstruct"):
        out += [f"{R}/dicom/{c}/structures.rtstruct.dcm" for c in dicom_tests]
    out += [f"{R}/metrics/seeds_table.tsv", f"{R}/metrics/uncertainty_correlation.tsv"]
    out += [f"{R}/report/{name}" for name in REPORT_FILES]
    out += [f"{R}/report/previews/{c}.png" for c in CASES]
    if manifest:
        out.append(f"{R}/manifest.json")
    return out
