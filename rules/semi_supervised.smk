# Self-training (semi_supervised.method: self_training): round 0 trains every fold as a supervised teacher; each
# teacher fold pseudo-labels the unlabelled images; the student of fold k learns from teacher fold k's only
# (carve.training.semi_supervised.student_training_inputs). The last round's students are the run's models (rule
# train_fold); the rounds before live in models/round_<r>/. Nothing requests these rules without self-training.


rule train_round_fold:
    input:
        plans=f"{R}/plans.json",
        splits=f"{R}/splits.json",
        cases=[f"{R}/preprocessed/{c}.npz" for c in TRAIN],
        unlabelled=unlabelled_preprocessed(),
        pseudo_labels=round_pseudo_labels,
    output:
        model=f"{R}/models/round_{{round}}/fold_{{fold}}/model.pt",
        config=f"{R}/models/round_{{round}}/fold_{{fold}}/config.json",
        curves=f"{R}/models/round_{{round}}/fold_{{fold}}/curves.tsv",
    log:
        f"{R}/logs/train_round_fold/round_{{round}}/fold_{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/train_round_fold/round_{{round}}/fold_{{fold}}.tsv"
    params:
        train=train_params(),
        seed=config["seed"],
        device=config["device"],
        case_datasets=train_case_datasets(),
        semi_supervised=round_semi_supervised,
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=train_runtime_min(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_fold.py"


rule pseudo_label_fold:
    input:
        model=round_model,
        plans=f"{R}/plans.json",
        unlabelled=unlabelled_preprocessed(),
    output:
        pseudo_labels=directory(f"{R}/pseudo_labels/round_{{round}}/fold_{{fold}}"),
    log:
        f"{R}/logs/pseudo_label_fold/round_{{round}}/fold_{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/pseudo_label_fold/round_{{round}}/fold_{{fold}}.tsv"
    params:
        semi_supervised=semi_supervised_params(),
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/pseudo_label_fold.py"
