rule export_bundle:
    input:
        plans=f"{R}/plans.json",
        models=fold_models(),
        postprocessing=f"{R}/postprocessing.json",
        members=f"{R}/members.json",
        precision=inference_precision_file(),
    output:
        bundle=directory(f"{R}/bundle"),
    log:
        f"{R}/logs/export_bundle/export_bundle.log",
    benchmark:
        f"{R}/benchmarks/export_bundle/export_bundle.tsv"
    params:
        predict=predict_options(),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/export_bundle.py"
