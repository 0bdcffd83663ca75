rule export_mesh:
    input:
        labels=segmentation_of,
        uncertainty=f"{R}/uncertainty/{{case}}.nii.gz",
    output:
        meshes=directory(f"{R}/meshes/{{case}}"),
    log:
        f"{R}/logs/export_mesh/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/export_mesh/{{case}}.tsv"
    params:
        labels=LABELS,
        mesh=config["mesh"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    conda:
        "../envs/mesh.yaml"
    script:
        "../workflow/scripts/export_mesh.py"
