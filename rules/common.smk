# The run, resolved once when the workflow is parsed (carve.pipeline.run_config: config and sheet checked against their
# schemas, defaults filled in, bundle, datasets, channels and cases by role); below only the names the rules use.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from carve.pipeline.run_config import ConfigError, resolve_run  # noqa: E402
from snakemake.logging import logger  # noqa: E402

try:
    RUN = resolve_run(config, warn=logger.warning)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.update(RUN.config)  # the validated config with its defaults: what the rules and the manifest read

R = RUN.results
LABELS = RUN.labels
DATASETS = RUN.datasets
CASES = RUN.cases
TRAIN = RUN.train
TEST = RUN.test
LABELLED_TEST = RUN.labelled_test
PREDICTED = RUN.predicted
FOLDS = RUN.folds
DEMO = RUN.demo


wildcard_constraints:
    case=RUN.constraints()["case"],
    test_case=RUN.constraints()["test_case"],
    train_case=RUN.constraints()["train_case"],
    unlabelled_case=RUN.constraints()["unlabelled_case"],
    fold=RUN.constraints()["fold"],
    round=RUN.constraints()["round"],


def _alternatives(names):
    from carve.pipeline.run_config import _alternatives as alternatives

    return alternatives(names)


# ---- input functions (wildcards -> paths) and parameters: each one line over RUN ------------------------------
def case_sources(wildcards):
    return RUN.case_sources(wildcards.case)


def case_channel_sources(wildcards):
    return RUN.case_channel_sources(wildcards.case)


def case_series(wildcards):
    return list(CASES[wildcards.case].series)


def case_label(wildcards):
    return str(CASES[wildcards.case].label)


def case_label_source(wildcards):
    return RUN.case_label_source(wildcards.case)


def case_label_names(case):
    return RUN.case_label_names(case)


def case_source_series(wildcards):
    return str(CASES[wildcards.test_case].image)


def case_reference_dicom(wildcards):
    return RUN.case_reference_dicom(wildcards.test_case)


def segmentation(case):
    return RUN.segmentation(case)


def segmentation_of(wildcards):
    return RUN.segmentation(wildcards.case)


def raw_segmentation(case):
    return RUN.raw_segmentation(case)


def evaluation_set(wildcards):
    return RUN.evaluation_set(wildcards.case)


def converted_image(case):
    return f"{R}/nifti/{case}/image.nii.gz"


def converted_label(case):
    return f"{R}/nifti/{case}/label.nii.gz"


uncertainty_maps = RUN.uncertainty_maps
channel_modalities = RUN.channel_modalities
channel_specs = RUN.channel_specs
dicom_read_options = RUN.dicom_read_options
plan_datasets = RUN.plan_datasets
train_case_datasets = RUN.train_case_datasets
dataset_train_cases = RUN.dataset_train_cases
dataset_label_names = RUN.dataset_label_names
individual_metrics = RUN.individual_metrics
fold_models = RUN.fold_models
plans_file = RUN.plans_file
postprocessing_file = RUN.postprocessing_file
members_file = RUN.members_file
inference_precision_file = RUN.inference_precision_file
extra_members = RUN.extra_members
member_comparisons = RUN.member_comparisons
manifest_sources = RUN.manifest_sources
predict_options = RUN.predict_options
train_params = RUN.train_params
budget_params = RUN.budget_params
budget_semi_supervised = RUN.budget_semi_supervised
semi_supervised_params = RUN.semi_supervised_params
unlabelled_preprocessed = RUN.unlabelled_preprocessed
training_stages = RUN.training_stages


def round_model(wildcards):
    return RUN.round_model(int(wildcards.round), wildcards.fold)


def round_pseudo_labels(wildcards):
    return RUN.round_pseudo_labels(int(wildcards.round), wildcards.fold)


def round_semi_supervised(wildcards):
    return RUN.round_semi_supervised(int(wildcards.round))


def train_fold_pseudo_labels(wildcards):
    return RUN.fold_pseudo_labels(wildcards.fold)

train_runtime_min = RUN.train_runtime_min
evaluated_cases = RUN.evaluated_cases
learning_curve_sizes = RUN.learning_curve_sizes
learning_curve_tables = RUN.learning_curve_tables
all_outputs = RUN.all_outputs
