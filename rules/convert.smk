rule convert_image:
    input:
        images=case_sources,
    output:
        image=f"{R}/nifti/{{case}}/image.nii.gz",
    log:
        f"{R}/logs/convert_image/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/convert_image/{{case}}.tsv"
    params:
        sources=case_channel_sources,
        dicom=dicom_read_options(),
        channels=channel_specs(),
        series=case_series,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/convert_image.py"


rule convert_label:
    input:
        label=case_label,
        image=f"{R}/nifti/{{case}}/image.nii.gz",
    output:
        label=f"{R}/nifti/{{case}}/label.nii.gz",
    log:
        f"{R}/logs/convert_label/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/convert_label/{{case}}.tsv"
    params:
        labels=lambda wildcards: case_label_source(wildcards)["labels"],
        to_values=lambda wildcards: case_label_source(wildcards)["to_values"],
        dicom=dicom_read_options(),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/convert_label.py"
