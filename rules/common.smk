# Configuration, cases sheet and the functions the rules use to find their inputs.
# Everything is validated here, when the workflow is parsed, before any job runs.
import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from carve.bundle import BundleError, load_bundle  # noqa: E402
from carve.sheet import SheetError, cases_from_folder, check_folds, load_sheet  # noqa: E402
from carve.demo import demo_cases  # noqa: E402
from carve.learning_curve import LearningCurveOptions, usable_sizes  # noqa: E402



def _load_bundle():
    """Inference mode: `bundle` names a trained model folder; its labels and channels are the run's."""
    if not config.get("bundle"):
        return None
    try:
        bundle = load_bundle(config["bundle"])
    except BundleError as err:
        raise WorkflowError(str(err)) from None
    given = {int(k): str(v) for k, v in (config.get("labels") or {}).items()}
    if given and given != bundle.labels:
        raise WorkflowError(f"config labels {given} differ from those of {config['bundle']}: {bundle.labels}")
    config["labels"] = bundle.labels
    if not config.get("channels") and bundle.channels != ("image",):
        config["channels"] = [{"name": n} for n in bundle.channels]
    names = tuple(c["name"] for c in config.get("channels") or [{"name": "image"}])
    if names != bundle.channels:
        raise WorkflowError(f"config channels {list(names)} differ from those of {config['bundle']}: {list(bundle.channels)}")
    return bundle


BUNDLE = _load_bundle()
USER_PREDICT = dict(config.get("predict") or {})  # before the schema fills in defaults
if "mirror_axes" in USER_PREDICT:
    raise WorkflowError(
        "config predict.mirror_axes is gone: prediction flips exactly the axes training flipped, set by "
        "plan.mirror_axes (canonical axes, default none); remove predict.mirror_axes"
    )
# YAML gives integer keys for `labels: {1: name}`; JSON schemas speak of string keys.
config["labels"] = {str(k): v for k, v in (config.get("labels") or {}).items()}
if not config["labels"]:
    del config["labels"]  # `datasets` give the labels (checked in _datasets)
for _block in (config.get("datasets") or {}).values():
    if isinstance(_block, dict) and isinstance(_block.get("labels"), dict):
        _block["labels"] = {str(k): v for k, v in _block["labels"].items()}
validate(config, "../workflow/schemas/config.schema.yaml", set_default=True)


def _datasets():
    """`datasets`: several datasets, one network; the run's labels are the union of theirs (carve.labels)."""
    from carve.labels import DatasetSpec, union_label_names

    block = config.get("datasets") or {}
    if BUNDLE is not None:  # a bundle trained on several datasets: its plans name them
        import json

        block = json.loads(Path(BUNDLE.plans).read_text()).get("datasets") or {}
        if config.get("datasets") and set(config["datasets"]) != set(block):
            raise WorkflowError(f"config datasets {sorted(config['datasets'])} differ from the bundle's {sorted(block)}")
    specs = {
        name: DatasetSpec(name, {int(k): str(v) for k, v in d["labels"].items()}, d.get("modality") or config["modality"])
        for name, d in block.items()
    }
    if not specs:
        if not config.get("labels"):
            raise WorkflowError("config: give `labels` (value: name), or `datasets` each with its labels")
        return {}
    union = union_label_names(list(specs.values()))
    given = {int(k): str(v) for k, v in (config.get("labels") or {}).items()}
    if given and given != union:
        raise WorkflowError(f"config labels {given} differ from the union of the datasets' labels {union}; drop `labels`")
    if config.get("learning_curve") and BUNDLE is None:
        raise WorkflowError("config: `learning_curve` and `datasets` cannot be combined yet; run the learning curve per dataset")
    config["labels"] = {str(k): v for k, v in union.items()}
    return specs


DATASETS = _datasets()
R = config["results"].rstrip("/")
CHANNELS = [c["name"] for c in config["channels"] or []]
LABELS = {int(k): v for k, v in config["labels"].items()}
if len(set(LABELS.values())) != len(LABELS):
    raise WorkflowError(f"config labels: names must be unique (they name files and columns), got {LABELS}")
DEMO = config.get("demo")


def _load_cases():
    sheet = Path(config["cases"])
    if DEMO is not None:
        domains = list(DEMO.get("domains") or [])
        if domains != list(DATASETS):
            raise WorkflowError(f"demo.domains {domains} must name the config's datasets in order: {list(DATASETS)}")
        return demo_cases(sheet, DEMO.get("n_train", 8), DEMO.get("n_test", 2), domains)
    try:
        if BUNDLE is not None:
            return _inference_cases(sheet)
        cases = load_sheet(sheet, CHANNELS, list(DATASETS))
        validate(pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False), "../workflow/schemas/cases.schema.yaml")
        check_folds(cases, config["folds"], sheet)
    except SheetError as err:
        raise WorkflowError(str(err)) from None
    return cases


def _inference_cases(source):
    """With a bundle: a folder of new scans, or a sheet whose cases are all predicted (role test)."""
    if source.is_dir():
        if DATASETS:
            raise SheetError(
                f"{config['bundle']} was trained on datasets {', '.join(DATASETS)}: give a sheet whose `dataset` "
                f"column names each case's, not the folder {source}"
            )
        return cases_from_folder(source)
    cases = load_sheet(source, CHANNELS, list(DATASETS))
    trained = [c.case for c in cases if c.role == "train"]
    if trained:
        raise SheetError(f"{source}: with a bundle every case is predicted; role 'train' on {', '.join(trained)}")
    return cases


CASES = {c.case: c for c in _load_cases()}
TRAIN = sorted(c for c, v in CASES.items() if v.role == "train")
TEST = sorted(c for c, v in CASES.items() if v.role == "test")
LABELLED_TEST = sorted(c for c in TEST if CASES[c].has_label)
FOLDS = list(range(config["folds"]))


def _check_datasets():
    """Every dataset needs training cases: at least one per fold's training set, two for individual models."""
    if not DATASETS or BUNDLE is not None:
        return
    counts = {name: sum(CASES[c].dataset == name for c in TRAIN) for name in DATASETS}
    need = 2 if config["individual_models"] else 1
    short = {name: n for name, n in counts.items() if n < need}
    if short:
        raise WorkflowError(
            f"datasets without enough training cases in {config['cases']}: {short} (each needs at least {need}"
            + (" for `individual_models`)" if need == 2 else ")")
        )


_check_datasets()


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


def case_dataset(wildcards):
    """The case's dataset (None in a run of one dataset)."""
    return CASES[wildcards.case].dataset


def case_label_names(case):
    """The labels a case is evaluated on: its dataset's (in the union's values), or all."""
    if not DATASETS:
        return LABELS
    return dataset_label_names(CASES[case].dataset)


def case_label_source(wildcards):
    """(the label values -> names in the case's own file, the map from them to the run's values)."""
    if not DATASETS:
        return {"labels": LABELS, "to_values": None}
    from carve.labels import union_values

    spec = DATASETS[CASES[wildcards.case].dataset]
    return {"labels": dict(spec.labels), "to_values": union_values(spec, LABELS)}


def plan_datasets():
    """Per dataset: modality, its training cases (indices into the plan's inputs) and its classes; None for one."""
    if not DATASETS:
        return None
    from carve.labels import annotated_classes

    return {
        name: {
            "modality": spec.modality,
            "cases": [i for i, c in enumerate(TRAIN) if CASES[c].dataset == name],
            "classes": list(annotated_classes(spec, LABELS)),
            "labels": {int(k): v for k, v in spec.labels.items()},
        }
        for name, spec in DATASETS.items()
    }


def train_case_datasets():
    """case -> dataset of the training cases (None for one dataset)."""
    return {c: CASES[c].dataset for c in TRAIN} if DATASETS else None


def dataset_train_cases(dataset):
    return [c for c in TRAIN if CASES[c].dataset == dataset]


def dataset_label_names(dataset):
    """A dataset's labels in the run's values."""
    from carve.labels import union_values

    return {v: LABELS[v] for v in sorted(union_values(DATASETS[dataset], LABELS).values())}


def individual_metrics():
    """Per dataset, the metrics of its individual models' cross-validation (with `individual_models`)."""
    if not DATASETS or not config["individual_models"]:
        return []
    return [f"{R}/individual/{name}/metrics.tsv" for name in DATASETS]


def case_label(wildcards):
    return str(CASES[wildcards.case].label)


def converted_image(case):
    return f"{R}/nifti/{case}/image.nii.gz"


def converted_label(case):
    return f"{R}/nifti/{case}/label.nii.gz"


def fold_models():
    if BUNDLE is not None:
        return [str(p) for p in BUNDLE.models]
    return expand(f"{R}/models/fold_{{fold}}/model.pt", fold=FOLDS)


def plans_file():
    return str(BUNDLE.plans) if BUNDLE is not None else f"{R}/plans.json"


def postprocessing_file():
    return str(BUNDLE.postprocessing) if BUNDLE is not None else f"{R}/postprocessing.json"


def manifest_sources():
    """The run's inputs: every case's image and label, and with a bundle its files."""
    sources = [str(c.image) for c in CASES.values()] + [str(c.label) for c in CASES.values() if c.has_label]
    if BUNDLE is not None:
        sources += [str(BUNDLE.root / "bundle.json"), plans_file(), postprocessing_file(), *fold_models()]
    return sources


def segmentation(case):
    """The prediction of a case: the fold ensemble for test cases, the held-out fold for training cases."""
    return f"{R}/cv/{case}.nii.gz" if CASES[case].role == "train" else f"{R}/predictions/{case}.nii.gz"


def segmentation_of(wildcards):
    return segmentation(wildcards.case)


def raw_segmentation(case):
    """The prediction of a case before postprocessing (rules/predict.smk)."""
    return f"{R}/cv_raw/{case}.nii.gz" if CASES[case].role == "train" else f"{R}/predictions_raw/{case}.nii.gz"


def uncertainty_maps(case):
    """The voxel maps of a case beside its entropy map (names as carve.predict.map_names writes them)."""
    names = ["mutual_information", "confidence"] + [f"std_{LABELS[k]}" for k in sorted(LABELS)]
    return [f"{R}/uncertainty/{case}/{name}.nii.gz" for name in names]


def predict_options():
    """The `predict` keys that change predictions (not the review keys, which only rank the cases); with a
    bundle, the options it was evaluated with unless the config sets them."""
    options = {**BUNDLE.predict, **USER_PREDICT} if BUNDLE is not None else config["predict"]
    return {k: v for k, v in options.items() if not k.startswith("review_")}


ASSESSMENT_FILES = (
    "postprocessing.json",
    "assessment/calibration.tsv",
    "assessment/reliability.tsv",
    "assessment/error_overlap.tsv",
    "assessment/score_correlation.tsv",
    "assessment/review.tsv",
    "report/reliability.png",
)


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


def _learning_curve():
    """The `learning_curve` block with only the sizes that leave a training case held out; None when off."""
    from dataclasses import replace

    from snakemake.logging import logger

    options = LearningCurveOptions.from_config(config.get("learning_curve"))
    if options is None:
        return None
    try:
        kept, dropped = usable_sizes(options.sizes, len(TRAIN))
    except ValueError as err:
        raise WorkflowError(str(err)) from None
    if dropped:
        logger.warning(f"learning_curve: size(s) {list(dropped)} dropped: {len(TRAIN)} training cases allow at most {len(TRAIN) - 1}")
    return replace(options, sizes=kept)


LEARNING_CURVE = _learning_curve()
LEARNING_CURVE_FILES = ("learning_curve/learning_curve.tsv", "learning_curve/summary.tsv", "report/learning_curve.png")


def learning_curve_sizes():
    """The learning curve's sizes that fit the training cases (empty when the mode is off)."""
    return [] if LEARNING_CURVE is None else list(LEARNING_CURVE.sizes)


def learning_curve_tables():
    """The per-model metrics tables of the learning curve, one per size and draw (none when the mode is off)."""
    if LEARNING_CURVE is None:
        return []
    runs = [(n, d) for n in LEARNING_CURVE.sizes for d in range(LEARNING_CURVE.draws)]
    return [f"{R}/learning_curve/n{n}_draw{d}/metrics.tsv" for n, d in runs]


REPORT_FILES = (
    "seeds_table.html",
    "metrics_boxplots.png",
    "uncertainty_vs_dice.png",
    "training_curves.png",
    "configuration.yaml",
    "configuration.html",
)


def inference_outputs(manifest=True):
    """With a bundle: labels, uncertainty, meshes and DICOM-SEG of every case; metrics where a label is given."""
    out = [segmentation(c) for c in CASES]
    out += [f"{R}/uncertainty/{c}.nii.gz" for c in CASES]
    out += [m for c in CASES for m in uncertainty_maps(c)]
    out += [f"{R}/meshes/{c}" for c in CASES]
    dicom_tests = [c for c in TEST if CASES[c].image.is_dir()]
    out += [f"{R}/dicom/{c}/segmentation.seg.dcm" for c in dicom_tests]
    if config["dicom"].get("rtstruct"):
        out += [f"{R}/dicom/{c}/structures.rtstruct.dcm" for c in dicom_tests]
    out += [f"{R}/metrics/cases/{c}.tsv" for c in LABELLED_TEST]
    if manifest:
        out.append(f"{R}/manifest.json")
    return out


def all_outputs(manifest=True):
    """Every final output of a run; with ``manifest`` also manifest.json, which records all the others."""
    if BUNDLE is not None:
        return inference_outputs(manifest)
    out = [f"{R}/bundle", f"{R}/plans.json", f"{R}/splits.json", f"{R}/metrics/cases.tsv", f"{R}/metrics/summary.tsv"]
    out += fold_models()
    out += [segmentation(c) for c in CASES]
    out += [f"{R}/uncertainty/{c}.nii.gz" for c in CASES]
    out += [m for c in CASES for m in uncertainty_maps(c)]
    out += [f"{R}/{name}" for name in ASSESSMENT_FILES]
    out += [f"{R}/meshes/{c}" for c in CASES]
    dicom_tests = [c for c in TEST if CASES[c].image.is_dir() or DEMO is not None]
    out += [f"{R}/dicom/{c}/segmentation.seg.dcm" for c in dicom_tests]
    if config["dicom"].get("rtstruct"):
        out += [f"{R}/dicom/{c}/structures.rtstruct.dcm" for c in dicom_tests]
    out += [f"{R}/metrics/seeds_table.tsv", f"{R}/metrics/uncertainty_correlation.tsv"]
    out += [f"{R}/report/{name}" for name in REPORT_FILES]
    out += [f"{R}/report/previews/{c}.png" for c in CASES]
    if LEARNING_CURVE is not None:
        out += [f"{R}/{name}" for name in LEARNING_CURVE_FILES]
    if individual_metrics():
        out += [f"{R}/metrics/datasets.tsv", f"{R}/report/datasets.png"]
    if manifest:
        out.append(f"{R}/manifest.json")
    return out
