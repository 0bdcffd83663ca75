# Mirrorings and projections, where configured, are first compared on cross-validation (compare_members, decide_members:
# carve.prediction.members) and kept as members of every prediction only where they pay (members.json).
# The forward passes run in one precision per run (choose_inference_precision: carve.prediction.inference_precision).
# Prediction: the fold ensemble for test cases, the held-out fold for training cases (carve.prediction.predict); both write
# the raw labels (the argmax of the members' mean probabilities) and the uncertainty maps on the case's own grid.
# Postprocessing (carve.prediction.postprocess) is decided once from the raw cross-validation predictions and their
# references, then applied alike to every raw prediction: predictions/ and cv/ hold the postprocessed labels
# that are evaluated, meshed and exported; predictions_raw/ and cv_raw/ keep the raw ones (the decision and the
# uncertainty assessment use those, so that neither is judged on its own output).


rule choose_inference_precision:
    input:
        plans=plans_file(),
        models=fold_models(),
    output:
        decision=inference_precision_file(),
    log:
        f"{R}/logs/choose_inference_precision/choose_inference_precision.log",
    benchmark:
        f"{R}/benchmarks/choose_inference_precision/choose_inference_precision.tsv"
    params:
        predict=predict_options(),
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/choose_inference_precision.py"


rule predict:
    input:
        image=f"{R}/nifti/{{test_case}}/image.nii.gz",
        plans=plans_file(),
        models=fold_models(),
        members=members_file(),
        precision=inference_precision_file(),
    output:
        labels=f"{R}/predictions_raw/{{test_case}}.nii.gz",
        uncertainty=f"{R}/uncertainty/{{test_case}}.nii.gz",
        scores=f"{R}/uncertainty/{{test_case}}.tsv",
        maps=uncertainty_maps("{test_case}"),
    log:
        f"{R}/logs/predict/{{test_case}}.log",
    benchmark:
        f"{R}/benchmarks/predict/{{test_case}}.tsv"
    params:
        predict=predict_options(),
        device=config["device"],
        dataset=lambda wildcards: CASES[wildcards.test_case].dataset,
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
        members=f"{R}/members.json",
        precision=inference_precision_file(),
    output:
        labels=f"{R}/cv_raw/{{train_case}}.nii.gz",
        uncertainty=f"{R}/uncertainty/{{train_case}}.nii.gz",
        scores=f"{R}/uncertainty/{{train_case}}.tsv",
        maps=uncertainty_maps("{train_case}"),
    log:
        f"{R}/logs/predict_cv/{{train_case}}.log",
    benchmark:
        f"{R}/benchmarks/predict_cv/{{train_case}}.tsv"
    params:
        predict=predict_options(),
        device=config["device"],
        dataset=lambda wildcards: CASES[wildcards.train_case].dataset,
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/predict_cv.py"


rule compare_members:
    input:
        image=f"{R}/nifti/{{train_case}}/image.nii.gz",
        label=f"{R}/nifti/{{train_case}}/label.nii.gz",
        plans=f"{R}/plans.json",
        splits=f"{R}/splits.json",
        models=fold_models(),
        precision=inference_precision_file(),
    output:
        comparison=f"{R}/members/{{train_case}}.tsv",
    log:
        f"{R}/logs/compare_members/{{train_case}}.log",
    benchmark:
        f"{R}/benchmarks/compare_members/{{train_case}}.tsv"
    params:
        predict=predict_options(),
        device=config["device"],
        dataset=lambda wildcards: CASES[wildcards.train_case].dataset,
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/compare_members.py"


rule decide_members:
    input:
        comparisons=member_comparisons(),
    output:
        decision=f"{R}/members.json",
    log:
        f"{R}/logs/decide_members/decide_members.log",
    benchmark:
        f"{R}/benchmarks/decide_members/decide_members.tsv"
    params:
        extra=extra_members(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/decide_members.py"


rule decide_postprocessing:
    input:
        predictions=[raw_segmentation(c) for c in TRAIN],
        references=[converted_label(c) for c in TRAIN],
    output:
        decision=f"{R}/postprocessing.json",
    log:
        f"{R}/logs/decide_postprocessing/decide_postprocessing.log",
    benchmark:
        f"{R}/benchmarks/decide_postprocessing/decide_postprocessing.tsv"
    params:
        labels=LABELS,
        postprocess=config["postprocess"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/decide_postprocessing.py"


rule postprocess:
    input:
        prediction=f"{R}/predictions_raw/{{test_case}}.nii.gz",
        decision=postprocessing_file(),
    output:
        labels=f"{R}/predictions/{{test_case}}.nii.gz",
    log:
        f"{R}/logs/postprocess/{{test_case}}.log",
    benchmark:
        f"{R}/benchmarks/postprocess/{{test_case}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/postprocess.py"


rule postprocess_cv:
    input:
        prediction=f"{R}/cv_raw/{{train_case}}.nii.gz",
        decision=f"{R}/postprocessing.json",
    output:
        labels=f"{R}/cv/{{train_case}}.nii.gz",
    log:
        f"{R}/logs/postprocess_cv/{{train_case}}.log",
    benchmark:
        f"{R}/benchmarks/postprocess_cv/{{train_case}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/postprocess_cv.py"
