# Several datasets, one network (config `datasets`, docs/multidomain.md): with `individual_models: true` each
# dataset also gets one model per fold trained on that fold's cases of the dataset only, and the shared model's
# cross-validation is compared with theirs per dataset (carve.evaluation.compare).


rule train_individual_fold:
    input:
        plans=f"{R}/plans.json",
        splits=f"{R}/splits.json",
        cases=[f"{R}/preprocessed/{c}.npz" for c in TRAIN],
    output:
        model=f"{R}/individual/{{dataset}}/fold_{{fold}}/model.pt",
        config=f"{R}/individual/{{dataset}}/fold_{{fold}}/config.json",
        curves=f"{R}/individual/{{dataset}}/fold_{{fold}}/curves.tsv",
        plot=f"{R}/individual/{{dataset}}/fold_{{fold}}/curves.png",
    log:
        f"{R}/logs/train_individual_fold/{{dataset}}/fold_{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/train_individual_fold/{{dataset}}/fold_{{fold}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(DATASETS),
    params:
        train=train_params(),
        seed=config["seed"],
        device=config["device"],
        case_datasets=train_case_datasets(),
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=train_runtime_min(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_individual_fold.py"


rule evaluate_individual_models:
    input:
        plans=f"{R}/plans.json",
        splits=f"{R}/splits.json",
        models=expand(f"{R}/individual/{{{{dataset}}}}/fold_{{fold}}/model.pt", fold=FOLDS),
        images=lambda wildcards: [converted_image(c) for c in dataset_train_cases(wildcards.dataset)],
        labels=lambda wildcards: [converted_label(c) for c in dataset_train_cases(wildcards.dataset)],
        members=f"{R}/members.json",
        precision=inference_precision_file(),
    output:
        table=f"{R}/individual/{{dataset}}/metrics.tsv",
        predictions=directory(f"{R}/individual/{{dataset}}/cv"),
    log:
        f"{R}/logs/evaluate_individual_models/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_individual_models/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(DATASETS),
    params:
        cases=lambda wildcards: dataset_train_cases(wildcards.dataset),
        labels=lambda wildcards: dataset_label_names(wildcards.dataset),
        tolerance_mm=config["evaluate"]["tolerance_mm"],
        predict=predict_options(),
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/evaluate_individual_models.py"


rule compare_datasets:
    input:
        shared=f"{R}/metrics/cases.tsv",
        individual=individual_metrics(),
    output:
        table=report(f"{R}/metrics/datasets.tsv", caption="../workflow/report/datasets.rst", category="Datasets"),
        plot=report(f"{R}/report/datasets.png", caption="../workflow/report/datasets.rst", category="Datasets"),
    log:
        f"{R}/logs/compare_datasets/compare_datasets.log",
    benchmark:
        f"{R}/benchmarks/compare_datasets/compare_datasets.tsv"
    params:
        case_datasets=train_case_datasets(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/compare_datasets.py"
