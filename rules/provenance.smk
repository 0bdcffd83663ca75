# Provenance: manifest.json, written last, records the sha256 of every input and output, the resolved
# configuration and the versions of carve, its code and its packages (carve.pipeline.provenance).


rule write_manifest:
    input:
        outputs=all_outputs(manifest=False),
        sheet=config["cases"],
        sources=manifest_sources(),
    output:
        manifest=f"{R}/manifest.json",
    log:
        f"{R}/logs/write_manifest/write_manifest.log",
    benchmark:
        f"{R}/benchmarks/write_manifest/write_manifest.tsv"
    params:
        config=config,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/write_manifest.py"
