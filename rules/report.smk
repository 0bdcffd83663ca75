# The report: `snakemake --report report.html` (or .zip) shows the outputs wrapped in report() below, with the
# captions of workflow/report/. Tables and plots: carve.evaluation.report; the per-case previews: carve.evaluation.preview.
# (No functions here: `snakemake --lint` wants them in common.smk.)


report: "../workflow/report/workflow.rst"


rule seeds_table:
    input:
        cases=f"{R}/metrics/cases.tsv",
    output:
        table=report(
            f"{R}/metrics/seeds_table.tsv",
            caption="../workflow/report/seeds_table.rst",
            category="Metrics",
            subcategory="Tables",
        ),
        html=report(
            f"{R}/report/seeds_table.html",
            caption="../workflow/report/seeds_table.rst",
            category="Metrics",
            subcategory="Tables",
        ),
    log:
        f"{R}/logs/seeds_table/seeds_table.log",
    benchmark:
        f"{R}/benchmarks/seeds_table/seeds_table.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/seeds_table.py"


rule plot_metrics:
    input:
        cases=f"{R}/metrics/cases.tsv",
    output:
        plot=report(
            f"{R}/report/metrics_boxplots.png",
            caption="../workflow/report/metrics_boxplots.rst",
            category="Metrics",
            subcategory="Plots",
        ),
    log:
        f"{R}/logs/plot_metrics/plot_metrics.log",
    benchmark:
        f"{R}/benchmarks/plot_metrics/plot_metrics.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/plot_metrics.py"


rule plot_uncertainty:
    input:
        cases=f"{R}/metrics/cases.tsv",
        scores=[f"{R}/uncertainty/{c}.tsv" for c in evaluated_cases()],
    output:
        plot=report(
            f"{R}/report/uncertainty_vs_dice.png",
            caption="../workflow/report/uncertainty_vs_dice.rst",
            category="Metrics",
            subcategory="Plots",
        ),
        correlations=report(
            f"{R}/metrics/uncertainty_correlation.tsv",
            caption="../workflow/report/uncertainty_vs_dice.rst",
            category="Metrics",
            subcategory="Tables",
        ),
    log:
        f"{R}/logs/plot_uncertainty/plot_uncertainty.log",
    benchmark:
        f"{R}/benchmarks/plot_uncertainty/plot_uncertainty.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/plot_uncertainty.py"


rule plot_training_curves:
    input:
        curves=expand(f"{R}/models/fold_{{fold}}/curves.tsv", fold=FOLDS),
    output:
        plot=report(
            f"{R}/report/training_curves.png",
            caption="../workflow/report/training_curves.rst",
            category="Training",
            subcategory="All folds",
        ),
    log:
        f"{R}/logs/plot_training_curves/plot_training_curves.log",
    benchmark:
        f"{R}/benchmarks/plot_training_curves/plot_training_curves.tsv"
    params:
        folds=FOLDS,
        labels=LABELS,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/plot_training_curves.py"


rule summarise_training:
    input:
        configs=[s["config"] for s in training_stages()],
        benchmarks=[s["benchmark"] for s in training_stages()],
        pseudo_labels=[s["pseudo_labels"] for s in training_stages() if s["pseudo_labels"]],
    output:
        table=report(
            f"{R}/report/training.tsv",
            caption="../workflow/report/training.rst",
            category="Training",
            subcategory="All folds",
        ),
        html=report(
            f"{R}/report/training.html",
            caption="../workflow/report/training.rst",
            category="Training",
            subcategory="All folds",
        ),
    log:
        f"{R}/logs/summarise_training/summarise_training.log",
    benchmark:
        f"{R}/benchmarks/summarise_training/summarise_training.tsv"
    params:
        stages=training_stages(),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/summarise_training.py"


rule preview_case:
    input:
        image=f"{R}/nifti/{{case}}/image.nii.gz",
        label=lambda wildcards: [converted_label(wildcards.case)] if CASES[wildcards.case].has_label else [],
        prediction=segmentation_of,
        meshes=f"{R}/meshes/{{case}}",
    output:
        preview=report(
            f"{R}/report/previews/{{case}}.png",
            caption="../workflow/report/preview.rst",
            category="Cases",
            subcategory=evaluation_set,
            labels=lambda wildcards: {"case": wildcards.case, "set": evaluation_set(wildcards)},
        ),
    log:
        f"{R}/logs/preview_case/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/preview_case/{{case}}.tsv"
    params:
        labels=LABELS,
        set=evaluation_set,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/mesh.yaml"
    script:
        "../workflow/scripts/preview_case.py"


rule report_configuration:
    input:
        plans=f"{R}/plans.json",
    output:
        yaml=report(
            f"{R}/report/configuration.yaml",
            caption="../workflow/report/configuration.rst",
            category="Configuration",
        ),
        html=report(
            f"{R}/report/configuration.html",
            caption="../workflow/report/configuration.rst",
            category="Configuration",
        ),
    log:
        f"{R}/logs/report_configuration/report_configuration.log",
    benchmark:
        f"{R}/benchmarks/report_configuration/report_configuration.tsv"
    params:
        config=config,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/report_configuration.py"
