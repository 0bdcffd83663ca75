rule plan:
    input:
        images=[converted_image(c) for c in TRAIN],
        labels=[converted_label(c) for c in TRAIN],
    output:
        plans=f"{R}/plans.json",
    log:
        f"{R}/logs/plan/plan.log",
    benchmark:
        f"{R}/benchmarks/plan/plan.tsv"
    params:
        labels=LABELS,
        modality=config["modality"],
        channels=channel_modalities(),
        datasets=plan_datasets(),
        plan=config["plan"],
        train=budget_params(),
        semi_supervised=budget_semi_supervised(),
        device=config["device"],
        seed=config["seed"],
    # as many as one training job: a time budget becomes iterations by timing the training step with them
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=30,
    # torch, not imaging: `device: auto` and a GPU's memory are resolved with torch, as training will see them
    # (carve.planning.plan.fit_to_memory), and a time budget is timed on the training step
    # (carve.training.budget); envs/torch.yaml has every package planning needs.
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/plan.py"


rule split:
    output:
        splits=f"{R}/splits.json",
    log:
        f"{R}/logs/split/split.log",
    benchmark:
        f"{R}/benchmarks/split/split.tsv"
    params:
        cases=TRAIN,
        groups=train_case_datasets(),
        folds=config["folds"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/split.py"


rule preprocess:
    input:
        image=f"{R}/nifti/{{train_case}}/image.nii.gz",
        label=f"{R}/nifti/{{train_case}}/label.nii.gz",
        plans=f"{R}/plans.json",
    output:
        case=f"{R}/preprocessed/{{train_case}}.npz",
    params:
        dataset=lambda wildcards: CASES[wildcards.train_case].dataset,
    log:
        f"{R}/logs/preprocess/{{train_case}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/{{train_case}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/preprocess.py"


rule preprocess_unlabelled:
    input:
        image=f"{R}/nifti/{{unlabelled_case}}/image.nii.gz",
        plans=f"{R}/plans.json",
    output:
        case=f"{R}/preprocessed/unlabelled/{{unlabelled_case}}.npz",
    log:
        f"{R}/logs/preprocess_unlabelled/{{unlabelled_case}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess_unlabelled/{{unlabelled_case}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/preprocess_unlabelled.py"
