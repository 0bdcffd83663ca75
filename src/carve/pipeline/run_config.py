"""The resolved run: the config checked against its schema, defaults filled in, the bundle, datasets, channels,
labels and cases by role, and every path the rules read or write.

:func:`resolve_run` is called once when the workflow is parsed (``rules/common.smk``); everything it decides is in
the frozen :class:`Run`, so the ``.smk`` files only declare rules and the decisions are unit-tested here. A problem
is a :class:`ConfigError` (a :class:`~carve.errors.CarveError`) naming the key, row or case, before any job runs.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from carve.errors import CarveError
from carve.evaluation.learning_curve import LearningCurveOptions, usable_sizes
from carve.imaging.labels import DatasetSpec, annotated_classes, union_label_names, union_values
from carve.pipeline.sheet import Case, SheetError, cases_from_folder, check_folds, load_sheet
from carve.prediction.bundle import Bundle, BundleError, load_bundle
from carve.training.budget import PLANNED_KEYS, requested_budget
from carve.training.semi_supervised import SemiSupervisedOptions

SCHEMAS = Path(__file__).resolve().parents[3] / "workflow" / "schemas"
ASSESSMENT_FILES = (
    "postprocessing.json",
    "assessment/calibration.tsv",
    "assessment/reliability.tsv",
    "assessment/error_overlap.tsv",
    "assessment/score_correlation.tsv",
    "assessment/failure_detection.tsv",
    "assessment/review.tsv",
    "assessment/review_score.json",
    "report/reliability.png",
    "report/risk_coverage.png",
)
REPORT_FILES = (
    "seeds_table.html",
    "metrics_boxplots.png",
    "uncertainty_vs_dice.png",
    "training_curves.png",
    "training.tsv",
    "training.html",
    "configuration.yaml",
    "configuration.html",
)
LEARNING_CURVE_FILES = ("learning_curve/learning_curve.tsv", "learning_curve/summary.tsv", "report/learning_curve.png")


class ConfigError(CarveError, ValueError):
    """A config (or its sheet) that cannot be run."""


Validator = Callable[[dict, Path], None]  # validate(config, schema file), filling in defaults


def validate_with_defaults(instance: dict, schema_path: Path) -> None:
    """Check ``instance`` against the JSON schema at ``schema_path``, filling in the schema's defaults (as Snakemake's
    ``validate(..., set_default=True)`` does)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    base = jsonschema.validators.validator_for(schema)

    def set_defaults(validator, properties, node, schema_):
        if isinstance(node, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    node.setdefault(name, copy.deepcopy(sub["default"]))
        yield from base.VALIDATORS["properties"](validator, properties, node, schema_)

    filling = jsonschema.validators.extend(base, {"properties": set_defaults})
    errors = sorted(filling(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        where = lambda e: ".".join(map(str, e.absolute_path)) or "the config"  # noqa: E731
        raise ConfigError("config: " + "; ".join(f"{where(e)}: {e.message}" for e in errors[:5]))


def _alternatives(names) -> str:
    """A wildcard constraint matching exactly ``names`` (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


@dataclass(frozen=True)
class Run:
    """Everything the rules need, resolved once. ``config`` is the validated config with its defaults (what the
    rules read as ``config``); ``cases`` maps case id to :class:`~carve.pipeline.sheet.Case`."""

    config: dict[str, Any]
    labels: dict[int, str]
    datasets: dict[str, DatasetSpec]
    cases: dict[str, Case]
    bundle: Bundle | None = None
    learning_curve: LearningCurveOptions | None = None
    user_predict: dict[str, Any] = field(default_factory=dict)

    # ---- what the run is made of --------------------------------------------------------------------------
    @property
    def results(self) -> str:
        return str(self.config["results"]).rstrip("/")

    @property
    def demo(self) -> dict | None:
        return self.config.get("demo")

    @property
    def channels(self) -> list[str]:
        return [c["name"] for c in self.config.get("channels") or []]

    @property
    def train(self) -> list[str]:
        return sorted(c for c, v in self.cases.items() if v.role == "train")

    @property
    def test(self) -> list[str]:
        return sorted(c for c, v in self.cases.items() if v.role == "test")

    @property
    def labelled_test(self) -> list[str]:
        return [c for c in self.test if self.cases[c].has_label]

    @property
    def predicted(self) -> list[str]:
        """The cases carve segments, in sheet order: the training cases (by cross-validation) and the test cases;
        not the unlabelled ones, which only training reads."""
        return [c for c, v in self.cases.items() if v.role != "unlabelled"]

    @property
    def semi_supervised(self) -> SemiSupervisedOptions:
        return SemiSupervisedOptions.from_config(self.config.get("semi_supervised"))

    @property
    def unlabelled_images(self) -> list[str]:
        """The cases whose images training reads without their labels (sorted): the rows of role unlabelled,
        and the test cases with ``semi_supervised.use_test_images``; none while ``semi_supervised.method`` is
        none (then the unlabelled rows are not even converted)."""
        options = self.semi_supervised
        if not options.enabled or self.bundle is not None:
            return []
        roles = ("unlabelled", "test") if options.use_test_images else ("unlabelled",)
        return sorted(c for c, v in self.cases.items() if v.role in roles)

    @property
    def folds(self) -> list[int]:
        return list(range(int(self.config["folds"])))

    def constraints(self) -> dict[str, str]:
        """Wildcard constraints of the run's cases."""
        return {
            "case": _alternatives(self.cases),
            "test_case": _alternatives(self.test),
            "train_case": _alternatives(self.train),
            "unlabelled_case": _alternatives(self.unlabelled_images),
            "fold": r"\d+",
            "round": r"\d+",
        }

    # ---- per case -----------------------------------------------------------------------------------------
    def case_sources(self, case: str) -> list[str]:
        """The distinct image files or folders of a case (one, or one per channel)."""
        return [str(p) for p in self.cases[case].sources]

    def case_channel_sources(self, case: str) -> list[str]:
        """One source per channel, in channel order (a study folder or 4D file may repeat)."""
        c = self.cases[case]
        return [str(p) for p in (c.channel_images or (c.image,))]

    def case_label_names(self, case: str) -> dict[int, str]:
        """The labels a case is evaluated on: its dataset's (in the union's values), or all."""
        if not self.datasets:
            return dict(self.labels)
        return self.dataset_label_names(self.cases[case].dataset)

    def case_label_source(self, case: str) -> dict[str, Any]:
        """The label values -> names in the case's own file, and the map from them to the run's values."""
        if not self.datasets:
            return {"labels": dict(self.labels), "to_values": None}
        spec = self.datasets[self.cases[case].dataset]
        return {"labels": dict(spec.labels), "to_values": union_values(spec, self.labels)}

    def dataset_label_names(self, dataset: str) -> dict[int, str]:
        """A dataset's labels in the run's values."""
        return {v: self.labels[v] for v in sorted(union_values(self.datasets[dataset], self.labels).values())}

    def segmentation(self, case: str) -> str:
        """The prediction of a case: the fold ensemble's for test cases, the held-out fold's for training cases."""
        folder = "cv" if self.cases[case].role == "train" else "predictions"
        return f"{self.results}/{folder}/{case}.nii.gz"

    def raw_segmentation(self, case: str) -> str:
        """The prediction of a case before postprocessing."""
        folder = "cv_raw" if self.cases[case].role == "train" else "predictions_raw"
        return f"{self.results}/{folder}/{case}.nii.gz"

    def uncertainty_maps(self, case: str) -> list[str]:
        """The voxel maps of a case beside its entropy map (names as carve.prediction.predict.map_names writes them)."""
        names = ["mutual_information", "confidence"] + [f"std_{self.labels[k]}" for k in sorted(self.labels)]
        return [f"{self.results}/uncertainty/{case}/{name}.nii.gz" for name in names]

    def evaluation_set(self, case: str) -> str:
        return "cv" if self.cases[case].role == "train" else "test"

    def case_reference_dicom(self, case: str) -> dict[str, Any]:
        """Reader options that find the series a test case's prediction lies on (its first channel's series)."""
        from carve.imaging.convert import ChannelSpec, DicomOptions

        spec = ChannelSpec(**self.channel_specs()[0])
        choice = self.cases[case].series[0] if self.cases[case].series else None
        return asdict(spec.dicom_options(DicomOptions(**self.dicom_read_options()), choice))

    # ---- per run ------------------------------------------------------------------------------------------
    def channel_modalities(self) -> list[list[str | None]]:
        """(name, modality or None) per configured channel, for the plan."""
        return [[c["name"], c.get("modality")] for c in self.config.get("channels") or []]

    def channel_specs(self) -> list[dict[str, Any]]:
        """The config's channels as the converter takes them (one unnamed channel by default)."""
        channels = self.config.get("channels") or [{"name": "image"}]
        return [{k: c.get(k) for k in ("name", "series_uid", "series_description")} for c in channels]

    def dicom_read_options(self) -> dict[str, Any]:
        """The options the DICOM reader takes (the export options are not among them)."""
        return {k: v for k, v in self.config["dicom"].items() if k != "rtstruct"}

    def plan_datasets(self) -> dict[str, dict] | None:
        """Per dataset: modality, its training cases (indices into the plan's inputs) and its classes."""
        if not self.datasets:
            return None
        train = self.train
        return {
            name: {
                "modality": spec.modality,
                "cases": [i for i, c in enumerate(train) if self.cases[c].dataset == name],
                "classes": list(annotated_classes(spec, self.labels)),
                "labels": {int(k): v for k, v in spec.labels.items()},
            }
            for name, spec in self.datasets.items()
        }

    def train_case_datasets(self) -> dict[str, str] | None:
        return {c: self.cases[c].dataset for c in self.train} if self.datasets else None

    def dataset_train_cases(self, dataset: str) -> list[str]:
        return [c for c in self.train if self.cases[c].dataset == dataset]

    def individual_metrics(self) -> list[str]:
        if not self.datasets or not self.config["individual_models"]:
            return []
        return [f"{self.results}/individual/{name}/metrics.tsv" for name in self.datasets]

    def fold_models(self) -> list[str]:
        if self.bundle is not None:
            return [str(p) for p in self.bundle.models]
        return [f"{self.results}/models/fold_{k}/model.pt" for k in self.folds]

    def plans_file(self) -> str:
        return str(self.bundle.plans) if self.bundle is not None else f"{self.results}/plans.json"

    def postprocessing_file(self) -> str:
        return str(self.bundle.postprocessing) if self.bundle is not None else f"{self.results}/postprocessing.json"

    def members_file(self) -> str:
        """``members.json``: whether the mirrorings and projections are kept as members (carve.prediction.members)."""
        return str(self.bundle.members) if self.bundle is not None else f"{self.results}/members.json"

    def inference_precision_file(self) -> str:
        """``inference_precision.json``: the precision every prediction of the run takes, decided on this run's
        machine (carve.prediction.inference_precision), also when the models come from a bundle."""
        return f"{self.results}/inference_precision.json"

    def extra_members(self) -> dict[str, Any]:
        """The members the config adds to the fold models: the planned mirror axes and the projections."""
        return {
            "mirror_axes": [int(a) for a in self.config["plan"].get("mirror_axes") or []],
            "projections": int(self.config["predict"].get("projections") or 0),
        }

    def member_comparisons(self) -> list[str]:
        """The per-case comparisons rule ``decide_members`` pools: one per training case where extra members are
        configured, none otherwise (the decision is then that there is nothing to keep)."""
        extra = self.extra_members()
        if not (extra["mirror_axes"] or extra["projections"]):
            return []
        return [f"{self.results}/members/{case}.tsv" for case in self.train]

    def manifest_sources(self) -> list[str]:
        """The run's inputs: every case's image and label, and with a bundle its files."""
        read = [*self.predicted, *(c for c in self.unlabelled_images if c not in self.predicted)]
        sources = [str(self.cases[c].image) for c in read]
        sources += [str(self.cases[c].label) for c in read if self.cases[c].has_label]
        if self.bundle is not None:
            sources += [str(self.bundle.root / "bundle.json"), self.plans_file(), self.postprocessing_file()]
            sources += self.fold_models()
        return sources

    def predict_options(self) -> dict[str, Any]:
        """The ``predict`` keys that change predictions (not the review keys, which only rank the cases); with a
        bundle, the options it was evaluated with unless the config sets them."""
        if self.bundle is not None:
            options = {**self.bundle.predict, **self.user_predict}
        else:
            options = self.config["predict"]
        return {k: v for k, v in options.items() if not k.startswith("review_") and k != "mirror_axes"}

    def train_params(self) -> dict[str, Any]:
        return dict(self.config.get("train", {}))

    def budget_params(self) -> dict[str, Any]:
        """The ``train`` keys that decide the iterations and the precision fixed at planning (carve.training.budget):
        only these rerun rule ``plan``, so a change of the learning rate does not re-plan."""
        train = self.config.get("train", {})
        return {k: train[k] for k in PLANNED_KEYS if k in train}

    def budget_semi_supervised(self) -> dict[str, Any]:
        """The ``semi_supervised`` keys that change what a training step costs (rule ``plan`` times the step):
        none unless a method trains inside the fold's job."""
        options = self.semi_supervised
        if options.method != "mean_teacher":
            return {}
        return {
            "method": options.method,
            "unlabelled_per_batch": options.unlabelled_per_batch,
            **({"copy_paste": True} if options.copy_paste else {}),
        }

    def semi_supervised_params(self) -> dict[str, Any]:
        """The ``semi_supervised`` block a fold trains with (method none without unlabelled images)."""
        return asdict(self.semi_supervised) if self.unlabelled_images else {"method": "none"}

    def self_training_rounds(self) -> int:
        """Teacher -> student rounds of self-training (0 without it): round 0 is the supervised teacher, round
        ``rounds`` the run's models (``models/fold_k``), the rounds between in ``models/round_<r>/fold_k``."""
        options = self.semi_supervised
        return options.rounds if options.method == "self_training" and self.unlabelled_images else 0

    def round_model(self, round_index: int, fold: int | str) -> str:
        """The model of fold ``fold`` after round ``round_index`` of self-training."""
        if int(round_index) == self.self_training_rounds():
            return f"{self.results}/models/fold_{fold}/model.pt"
        return f"{self.results}/models/round_{int(round_index)}/fold_{fold}/model.pt"

    def round_pseudo_labels(self, round_index: int, fold: int | str) -> list[str]:
        """The pseudo-label folder the model of round ``round_index`` of fold ``fold`` learns from: its own fold's
        teacher of the round before (none for round 0, the supervised teacher)."""
        if int(round_index) == 0:
            return []
        return [f"{self.results}/pseudo_labels/round_{int(round_index) - 1}/fold_{fold}"]

    def fold_pseudo_labels(self, fold: int | str) -> list[str]:
        """What rule ``train_fold`` (the run's models) reads from self-training: the last round's pseudo-labels."""
        rounds = self.self_training_rounds()
        return self.round_pseudo_labels(rounds, fold) if rounds else []

    def round_semi_supervised(self, round_index: int) -> dict[str, Any]:
        """The block a round's fold trains with: round 0 (the teacher) supervised, the students self-training."""
        return {"method": "none"} if int(round_index) == 0 else self.semi_supervised_params()

    def training_stages(self) -> list[dict[str, Any]]:
        """Every training job of the run, in order, for the report: stage, fold, its config.json, its benchmark and
        the pseudo-label folder it learnt from (or None)."""
        rounds, r = self.self_training_rounds(), self.results
        stages = []
        for round_index in range(rounds + 1):
            final = round_index == rounds
            folder = "models" if final else f"models/round_{round_index}"
            bench = "train_fold" if final else f"train_round_fold/round_{round_index}"
            for fold in self.folds:
                pseudo = self.round_pseudo_labels(round_index, fold) if rounds else []
                stages.append(
                    {
                        "stage": "final" if final else f"teacher round {round_index}",
                        "fold": fold,
                        "config": f"{r}/{folder}/fold_{fold}/config.json",
                        "benchmark": f"{r}/benchmarks/{bench}/fold_{fold}.tsv",
                        "pseudo_labels": pseudo[0] if pseudo else None,
                    }
                )
        return stages

    def unlabelled_preprocessed(self) -> list[str]:
        """The preprocessed unlabelled images every fold reads (none without a semi-supervised method)."""
        return [f"{self.results}/preprocessed/unlabelled/{c}.npz" for c in self.unlabelled_images]

    def train_runtime_min(self) -> int:
        """The scheduler's time limit of one training job: twice a time budget plus an hour (the default budget
        where the config gives no count); three hours for a count of iterations or epochs (a profile may set more)."""
        kind, value = requested_budget(self.config["train"])
        return int(60 + 2 * (value if kind == "time_budget_min" else 60))

    def evaluated_cases(self) -> list[str]:
        return self.train + self.labelled_test

    def learning_curve_sizes(self) -> list[int]:
        return [] if self.learning_curve is None else list(self.learning_curve.sizes)

    def learning_curve_tables(self) -> list[str]:
        if self.learning_curve is None:
            return []
        runs = [(n, d) for n in self.learning_curve.sizes for d in range(self.learning_curve.draws)]
        return [f"{self.results}/learning_curve/n{n}_draw{d}/metrics.tsv" for n, d in runs]

    def _per_case(self) -> list[str]:
        """Labels, entropy map and further maps of every case."""
        out = [self.segmentation(c) for c in self.predicted]
        out += [f"{self.results}/uncertainty/{c}.nii.gz" for c in self.predicted]
        return out + [m for c in self.predicted for m in self.uncertainty_maps(c)]

    def _meshes_and_dicom(self) -> list[str]:
        """Meshes of every case; DICOM-SEG (and RTSTRUCT) of every test case given as DICOM (all, in the demo)."""
        r = self.results
        dicom = [
            c for c in self.test if self.cases[c].image.is_dir() or (self.bundle is None and self.demo is not None)
        ]
        out = [f"{r}/meshes/{c}" for c in self.predicted]
        out += [f"{r}/dicom/{c}/segmentation.seg.dcm" for c in dicom]
        if self.config["dicom"].get("rtstruct"):
            out += [f"{r}/dicom/{c}/structures.rtstruct.dcm" for c in dicom]
        return out

    def all_outputs(self, manifest: bool = True) -> list[str]:
        """Every final output of a run; with ``manifest`` also manifest.json, which records all the others."""
        r = self.results
        if self.bundle is not None:  # inference: labels, uncertainty, meshes, DICOM; metrics where labelled
            out = self._per_case() + self._meshes_and_dicom()
            out += [f"{r}/metrics/cases/{c}.tsv" for c in self.labelled_test]
            return out + ([f"{r}/manifest.json"] if manifest else [])
        out = [
            f"{r}/bundle",
            f"{r}/plans.json",
            f"{r}/splits.json",
            f"{r}/metrics/cases.tsv",
            f"{r}/metrics/summary.tsv",
        ]
        out += self.fold_models() + self._per_case()
        out += [f"{r}/{name}" for name in ASSESSMENT_FILES]
        out += self._meshes_and_dicom()
        out += [f"{r}/metrics/seeds_table.tsv", f"{r}/metrics/uncertainty_correlation.tsv"]
        out += [f"{r}/report/{name}" for name in REPORT_FILES]
        out += [f"{r}/report/previews/{c}.png" for c in self.predicted]
        if self.learning_curve is not None:
            out += [f"{r}/{name}" for name in LEARNING_CURVE_FILES]
        if self.individual_metrics():
            out += [f"{r}/metrics/datasets.tsv", f"{r}/report/datasets.png"]
        return out + ([f"{r}/manifest.json"] if manifest else [])


RESERVED_LABEL_NAMES = ("foreground", "mean_foreground")  # per-label columns beside the mean over labels


# ---- resolution ------------------------------------------------------------------------------------------------
def _load_bundle(config: dict) -> Bundle | None:
    """Inference mode: ``bundle`` names a trained model folder; its labels and channels are the run's."""
    if not config.get("bundle"):
        return None
    try:
        bundle = load_bundle(config["bundle"])
    except BundleError as err:
        raise ConfigError(str(err)) from None
    given = {int(k): str(v) for k, v in (config.get("labels") or {}).items()}
    if given and given != bundle.labels:
        raise ConfigError(f"config labels {given} differ from those of {config['bundle']}: {bundle.labels}")
    config["labels"] = bundle.labels
    if not config.get("channels") and bundle.channels != ("image",):
        config["channels"] = [{"name": n} for n in bundle.channels]
    names = tuple(c["name"] for c in config.get("channels") or [{"name": "image"}])
    if names != bundle.channels:
        raise ConfigError(
            f"config channels {list(names)} differ from those of {config['bundle']}: {list(bundle.channels)}"
        )
    return bundle


def _datasets(config: dict, bundle: Bundle | None) -> dict[str, DatasetSpec]:
    """``datasets``: several datasets, one network; the run's labels are the union of theirs."""
    block = config.get("datasets") or {}
    if bundle is not None:  # a bundle trained on several datasets: its plans name them
        block = json.loads(Path(bundle.plans).read_text()).get("datasets") or {}
        if config.get("datasets") and set(config["datasets"]) != set(block):
            raise ConfigError(f"config datasets {sorted(config['datasets'])} differ from the bundle's {sorted(block)}")
    specs = {
        name: DatasetSpec(
            name, {int(k): str(v) for k, v in d["labels"].items()}, d.get("modality") or config["modality"]
        )
        for name, d in block.items()
    }
    if not specs:
        if not config.get("labels"):
            raise ConfigError("config: give `labels` (value: name), or `datasets` each with its labels")
        return {}
    union = union_label_names(list(specs.values()))
    given = {int(k): str(v) for k, v in (config.get("labels") or {}).items()}
    if given and given != union:
        raise ConfigError(f"config labels {given} differ from the union of the datasets' labels {union}; drop `labels`")
    if config.get("learning_curve") and bundle is None:
        raise ConfigError(
            "config: `learning_curve` and `datasets` cannot be combined yet; run the learning curve per dataset"
        )
    config["labels"] = {str(k): v for k, v in union.items()}
    return specs


def _cases(config: dict, channels: list[str], datasets: Mapping, bundle: Bundle | None, validate: Validator):
    from carve.pipeline.demo import demo_cases

    sheet = Path(config["cases"])
    demo = config.get("demo")
    if demo is not None:
        domains = list(demo.get("domains") or [])
        if domains != list(datasets):
            raise ConfigError(f"demo.domains {domains} must name the config's datasets in order: {list(datasets)}")
        return demo_cases(sheet, demo.get("n_train", 8), demo.get("n_test", 2), domains, demo.get("n_unlabelled", 0))
    try:
        if bundle is not None:
            return _inference_cases(sheet, channels, datasets, config["bundle"])
        cases = load_sheet(sheet, channels, list(datasets))
        _validate_sheet(sheet, validate)
        check_folds(cases, config["folds"], sheet)
    except SheetError as err:
        raise ConfigError(str(err)) from None
    return cases


def _validate_sheet(sheet: Path, validate: Validator) -> None:
    import pandas as pd

    table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    for row in table.to_dict("records"):
        validate(row, SCHEMAS / "cases.schema.yaml")


def _inference_cases(source: Path, channels: list[str], datasets: Mapping, bundle_path: str) -> list[Case]:
    """With a bundle: a folder of new scans, or a sheet whose cases are all predicted (role test)."""
    if source.is_dir():
        if datasets:
            raise SheetError(
                f"{bundle_path} was trained on datasets {', '.join(datasets)}: give a sheet whose `dataset` "
                f"column names each case's, not the folder {source}"
            )
        return cases_from_folder(source)
    cases = load_sheet(source, channels, list(datasets))
    for role in ("train", "unlabelled"):
        trained = [c.case for c in cases if c.role == role]
        if trained:
            raise SheetError(f"{source}: with a bundle every case is predicted; role '{role}' on {', '.join(trained)}")
    return cases


def _check_datasets(run: Run) -> None:
    """Every dataset needs training cases: at least one per fold's training set, two for individual models."""
    if not run.datasets or run.bundle is not None:
        return
    counts = {name: sum(run.cases[c].dataset == name for c in run.train) for name in run.datasets}
    need = 2 if run.config["individual_models"] else 1
    short = {name: n for name, n in counts.items() if n < need}
    if short:
        raise ConfigError(
            f"datasets without enough training cases in {run.config['cases']}: {short} (each needs at least {need}"
            + (" for `individual_models`)" if need == 2 else ")")
        )


def _check_semi_supervised(run: Run, warn: Callable[[str], None]) -> None:
    """A semi-supervised method needs images without labels; unlabelled rows without a method are not read."""
    try:
        options = run.semi_supervised
    except CarveError as err:
        raise ConfigError(str(err)) from None
    sheet = run.config["cases"]
    rows = [c for c, v in run.cases.items() if v.role == "unlabelled"]
    if run.bundle is not None:
        return
    if not options.enabled:
        if rows:
            named = ", ".join(rows[:3]) + (", ..." if len(rows) > 3 else "")
            warn(
                f"{sheet}: {len(rows)} case(s) of role unlabelled ({named}) "
                "are not read: semi_supervised.method is none"
            )
        return
    if run.datasets:
        raise ConfigError("config: `semi_supervised` and `datasets` cannot be combined yet; use one or the other")
    if not run.unlabelled_images:
        given = "; semi_supervised.use_test_images is on, but there are no test cases" * options.use_test_images
        raise ConfigError(
            f"semi_supervised.method: '{options.method}' needs images without labels, and {sheet} has none: give "
            f"rows of role unlabelled, or set semi_supervised.use_test_images to train on the test cases' images{given}"
        )


def _learning_curve(config: dict, n_train: int, warn: Callable[[str], None]) -> LearningCurveOptions | None:
    """The ``learning_curve`` block with only the sizes that leave a training case held out; None when off."""
    options = LearningCurveOptions.from_config(config.get("learning_curve"))
    if options is None:
        return None
    try:
        kept, dropped = usable_sizes(options.sizes, n_train)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if dropped:
        warn(f"learning_curve: size(s) {list(dropped)} dropped: {n_train} training cases allow at most {n_train - 1}")
    return replace(options, sizes=kept)


def resolve_run(
    config: Mapping[str, Any], validate: Validator = validate_with_defaults, warn: Callable[[str], None] = print
) -> Run:
    """Resolve a raw config (as Snakemake read it) into a :class:`Run`; ``validate`` checks a value against a schema
    file and fills in its defaults, ``warn`` reports what was dropped."""
    config = copy.deepcopy(dict(config))
    bundle = _load_bundle(config)
    user_predict = dict(config.get("predict") or {})  # before the schema fills in defaults
    if "mirror_axes" in user_predict:
        raise ConfigError(
            "config predict.mirror_axes is gone: prediction flips exactly the axes training flipped, set by "
            "plan.mirror_axes (canonical axes, default none); remove predict.mirror_axes"
        )
    # YAML gives integer keys for `labels: {1: name}`; JSON schemas speak of string keys.
    config["labels"] = {str(k): v for k, v in (config.get("labels") or {}).items()}
    if not config["labels"]:
        del config["labels"]  # `datasets` give the labels (checked in _datasets)
    for block in (config.get("datasets") or {}).values():
        if isinstance(block, dict) and isinstance(block.get("labels"), dict):
            block["labels"] = {str(k): v for k, v in block["labels"].items()}
    validate(config, SCHEMAS / "config.schema.yaml")
    datasets = _datasets(config, bundle)
    labels = {int(k): v for k, v in config["labels"].items()}
    if len(set(labels.values())) != len(labels):
        raise ConfigError(f"config labels: names must be unique (they name files and columns), got {labels}")
    reserved = [f"{k}: {v}" for k, v in labels.items() if v.lower() in RESERVED_LABEL_NAMES]
    if reserved:
        raise ConfigError(
            f"config labels: {', '.join(reserved)} is a reserved name (the scores and metrics call the mean over "
            f"the labels '{RESERVED_LABEL_NAMES[0]}'); rename it"
        )
    channels = [c["name"] for c in config.get("channels") or []]
    cases = _cases(config, channels, datasets, bundle, validate)
    run = Run(config, labels, datasets, {c.case: c for c in cases}, bundle, None, user_predict)
    _check_datasets(run)
    _check_semi_supervised(run, warn)
    return replace(run, learning_curve=_learning_curve(config, len(run.train), warn))
