rule predict:
    input:
        image=f"{R}/nifti/{{test_case}}/image.nii.gz",
        plans=f"{R}/plans.json",
        models=fold_models(),
    output:
        labels=f"{R}/predictions/{{test_case}}.nii.gz",
        uncertainty=f"{R}/uncertainty/{{test_case}}.nii.gz",
        scores=f"{R}/uncertainty/{{test_case}}.tsv",
    log:
        f"{R}/logs/predict/{{test_case}}.log",
    benchmark:
        f"{R}/benchmarks/predict/{{test_case}}.tsv"
    params:
        predict=config["predict"],
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/predict.py"


rule predict_cv:
    input:
        image=f"{R}/nifti/{{train_case}}/image.nii.gz",
        plans=f"{R}/plans.json",
        splits=f"{R}/splits.json",
        models=fold_models(),
    output:
        labels=f"{R}/cv/{{train_case}}.nii.gz",
        uncertainty=f"{R}/uncertainty/{{train_case}}.nii.gz",
        scores=f"{R}/uncertainty/{{train_case}}.tsv",
    log:
        f"{R}/logs/predict_cv/{{train_case}}.log",
    benchmark:
        f"{R}/benchmarks/predict_cv/{{train_case}}.tsv"
    params:
        predict=config["predict"],
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/predict_cv.py"
