# How good is the uncertainty (carve.evaluation.calibration)? Measured on the training cases' raw cross-validation
# predictions (cv_raw/), against their references: calibration of the confidence map, overlap of thresholded
# uncertainty with the errors, rank correlation of the case scores with the case Dice, and how well each case score
# detects the failed cases (AURC, AUROC; carve.evaluation.failure). Then every case, test cases included, is ranked
# by its score and the likely wrong ones are flagged for review.


rule assess_case:
    input:
        prediction=f"{R}/cv_raw/{{train_case}}.nii.gz",
        reference=f"{R}/nifti/{{train_case}}/label.nii.gz",
        entropy=f"{R}/uncertainty/{{train_case}}.nii.gz",
        confidence=f"{R}/uncertainty/{{train_case}}/confidence.nii.gz",
        mutual_information=f"{R}/uncertainty/{{train_case}}/mutual_information.nii.gz",
    output:
        reliability=f"{R}/assessment/cases/{{train_case}}_reliability.tsv",
        errors=f"{R}/assessment/cases/{{train_case}}_errors.tsv",
    log:
        f"{R}/logs/assess_case/{{train_case}}.log",
    benchmark:
        f"{R}/benchmarks/assess_case/{{train_case}}.tsv"
    params:
        n_classes=len(LABELS) + 1,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/assess_case.py"


rule assess_uncertainty:
    input:
        reliability=[f"{R}/assessment/cases/{c}_reliability.tsv" for c in TRAIN],
        errors=[f"{R}/assessment/cases/{c}_errors.tsv" for c in TRAIN],
        scores=[f"{R}/uncertainty/{c}.tsv" for c in TRAIN],
        cases=f"{R}/metrics/cases.tsv",
    output:
        calibration=f"{R}/assessment/calibration.tsv",
        reliability=f"{R}/assessment/reliability.tsv",
        error_overlap=f"{R}/assessment/error_overlap.tsv",
        score_correlation=f"{R}/assessment/score_correlation.tsv",
        failure_detection=report(
            f"{R}/assessment/failure_detection.tsv",
            caption="../workflow/report/risk_coverage.rst",
            category="Metrics",
            subcategory="Tables",
        ),
        figure=report(
            f"{R}/report/reliability.png",
            caption="../workflow/report/reliability.rst",
            category="Metrics",
            subcategory="Plots",
        ),
        risk_coverage=report(
            f"{R}/report/risk_coverage.png",
            caption="../workflow/report/risk_coverage.rst",
            category="Metrics",
            subcategory="Plots",
        ),
    log:
        f"{R}/logs/assess_uncertainty/assess_uncertainty.log",
    benchmark:
        f"{R}/benchmarks/assess_uncertainty/assess_uncertainty.tsv"
    params:
        cv_cases=TRAIN,
        failure_dice_threshold=config["evaluate"]["failure_dice_threshold"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/assess_uncertainty.py"


rule review_cases:
    input:
        scores=[f"{R}/uncertainty/{c}.tsv" for c in PREDICTED],
        cases=f"{R}/metrics/cases.tsv",
        failures=f"{R}/assessment/failure_detection.tsv",
    output:
        review=f"{R}/assessment/review.tsv",
        choice=f"{R}/assessment/review_score.json",
        test_failures=f"{R}/assessment/failure_detection_test.tsv",
    log:
        f"{R}/logs/review_cases/review_cases.log",
    benchmark:
        f"{R}/benchmarks/review_cases/review_cases.tsv"
    params:
        cv_cases=TRAIN,
        score=config["predict"]["review_score"],
        quantile=config["predict"]["review_quantile"],
        dice_threshold=config["evaluate"]["failure_dice_threshold"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/review_cases.py"
