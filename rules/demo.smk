if DEMO is not None:

    rule generate_demo:
        output:
            sheet=config["cases"],
            images=[directory(str(c.image)) for c in CASES.values()],
            labels=[str(c.label) for c in CASES.values() if c.has_label],
        log:
            f"{R}/logs/generate_demo/generate_demo.log",
        benchmark:
            f"{R}/benchmarks/generate_demo/generate_demo.tsv"
        params:
            demo=DEMO,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../envs/imaging.yaml"
        script:
            "../workflow/scripts/generate_demo.py"
