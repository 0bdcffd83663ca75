rule evaluate:
    input:
        reference=f"{R}/nifti/{{case}}/label.nii.gz",
        prediction=segmentation_of,
    output:
        table=f"{R}/metrics/cases/{{case}}.tsv",
    log:
        f"{R}/logs/evaluate/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{case}}.tsv"
    params:
        labels=lambda wildcards: case_label_names(wildcards.case),
        set=evaluation_set,
        tolerance_mm=config["evaluate"]["tolerance_mm"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule summarise_metrics:
    input:
        tables=[f"{R}/metrics/cases/{c}.tsv" for c in evaluated_cases()],
    output:
        cases=f"{R}/metrics/cases.tsv",
        summary=f"{R}/metrics/summary.tsv",
    log:
        f"{R}/logs/summarise_metrics/summarise_metrics.log",
    benchmark:
        f"{R}/benchmarks/summarise_metrics/summarise_metrics.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/summarise_metrics.py"
