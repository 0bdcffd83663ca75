rule train_fold:
    input:
        plans=f"{R}/plans.json",
        splits=f"{R}/splits.json",
        cases=[f"{R}/preprocessed/{c}.npz" for c in TRAIN],
        unlabelled=unlabelled_preprocessed(),
        pseudo_labels=train_fold_pseudo_labels,
    output:
        model=f"{R}/models/fold_{{fold}}/model.pt",
        config=f"{R}/models/fold_{{fold}}/config.json",
        curves=f"{R}/models/fold_{{fold}}/curves.tsv",
        plot=report(f"{R}/models/fold_{{fold}}/curves.png", caption="../workflow/report/fold_curves.rst", category="Training", subcategory="Per fold", labels={"fold": "{fold}"}),
    log:
        f"{R}/logs/train_fold/fold_{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/train_fold/fold_{{fold}}.tsv"
    params:
        train=train_params(),
        seed=config["seed"],
        device=config["device"],
        case_datasets=train_case_datasets(),
        semi_supervised=semi_supervised_params(),
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=train_runtime_min(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_fold.py"
