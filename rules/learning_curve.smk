# Learning curve (config `learning_curve: {sizes: [2, 4, 8], draws: 3}`): one model per training-set size and
# draw, trained like a fold on a nested, seeded subset of the training cases and scored on the draw's held-out
# training cases and the labelled test cases. One subsets file per draw, so that more draws add models and
# leave the trained ones alone. Logic: carve.evaluation.learning_curve; docs/learning_curve.md.


rule draw_learning_curve_subsets:
    output:
        subsets=f"{R}/learning_curve/subsets/draw{{draw}}.json",
    log:
        f"{R}/logs/draw_learning_curve_subsets/draw{{draw}}.log",
    benchmark:
        f"{R}/benchmarks/draw_learning_curve_subsets/draw{{draw}}.tsv"
    wildcard_constraints:
        draw=r"\d+",
    params:
        train=TRAIN,
        test=LABELLED_TEST,
        sizes=learning_curve_sizes(),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/draw_learning_curve_subsets.py"


rule train_learning_curve_model:
    input:
        plans=f"{R}/plans.json",
        subsets=f"{R}/learning_curve/subsets/draw{{draw}}.json",
        cases=[f"{R}/preprocessed/{c}.npz" for c in TRAIN],
    output:
        model=f"{R}/learning_curve/n{{n}}_draw{{draw}}/model.pt",
        config=f"{R}/learning_curve/n{{n}}_draw{{draw}}/config.json",
        curves=f"{R}/learning_curve/n{{n}}_draw{{draw}}/curves.tsv",
        plot=f"{R}/learning_curve/n{{n}}_draw{{draw}}/curves.png",
    log:
        f"{R}/logs/train_learning_curve_model/n{{n}}_draw{{draw}}.log",
    benchmark:
        f"{R}/benchmarks/train_learning_curve_model/n{{n}}_draw{{draw}}.tsv"
    wildcard_constraints:
        n=r"\d+",
        draw=r"\d+",
    params:
        train=train_params(),
        seed=config["seed"],
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=train_runtime_min(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_learning_curve_model.py"


rule evaluate_learning_curve_model:
    input:
        model=f"{R}/learning_curve/n{{n}}_draw{{draw}}/model.pt",
        plans=f"{R}/plans.json",
        subsets=f"{R}/learning_curve/subsets/draw{{draw}}.json",
        images=[converted_image(c) for c in evaluated_cases()],
        labels=[converted_label(c) for c in evaluated_cases()],
        members=f"{R}/members.json",
        precision=inference_precision_file(),
    output:
        table=f"{R}/learning_curve/n{{n}}_draw{{draw}}/metrics.tsv",
        predictions=directory(f"{R}/learning_curve/n{{n}}_draw{{draw}}/predictions"),
    log:
        f"{R}/logs/evaluate_learning_curve_model/n{{n}}_draw{{draw}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_learning_curve_model/n{{n}}_draw{{draw}}.tsv"
    wildcard_constraints:
        n=r"\d+",
        draw=r"\d+",
    params:
        cases=evaluated_cases(),
        labels=LABELS,
        tolerance_mm=config["evaluate"]["tolerance_mm"],
        predict=config["predict"],
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/evaluate_learning_curve_model.py"


rule summarise_learning_curve:
    input:
        tables=learning_curve_tables(),
    output:
        table=report(
            f"{R}/learning_curve/learning_curve.tsv",
            caption="../workflow/report/learning_curve.rst",
            category="Learning curve",
        ),
        summary=report(
            f"{R}/learning_curve/summary.tsv",
            caption="../workflow/report/learning_curve.rst",
            category="Learning curve",
        ),
        plot=report(
            f"{R}/report/learning_curve.png",
            caption="../workflow/report/learning_curve.rst",
            category="Learning curve",
        ),
    log:
        f"{R}/logs/summarise_learning_curve/summarise_learning_curve.log",
    benchmark:
        f"{R}/benchmarks/summarise_learning_curve/summarise_learning_curve.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/summarise_learning_curve.py"
