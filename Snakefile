# carve: k-fold 3D U-Net segmentation from few labelled scans, DICOM to STL.
# Run:  snakemake --cores all                 (config/config.yaml: the synthetic demo)
#       snakemake --cores all --configfile my.yaml
from snakemake.utils import min_version

min_version("9.0")


# The demo's config only when no --configfile is given: a user's config must not inherit the demo's keys (its
# `demo:` block would generate the demo in place of the user's cases).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/convert.smk"
include: "rules/plan.smk"
include: "rules/train.smk"
include: "rules/semi_supervised.smk"
include: "rules/predict.smk"
include: "rules/assess.smk"
include: "rules/evaluate.smk"
include: "rules/mesh.smk"
include: "rules/dicom.smk"
include: "rules/report.smk"
include: "rules/learning_curve.smk"
include: "rules/datasets.smk"
include: "rules/bundle.smk"
include: "rules/provenance.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
