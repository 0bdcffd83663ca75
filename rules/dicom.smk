rule export_dicom_seg:
    input:
        labels=f"{R}/predictions/{{test_case}}.nii.gz",
        source=case_source_series,
    output:
        seg=f"{R}/dicom/{{test_case}}/segmentation.seg.dcm",
    log:
        f"{R}/logs/export_dicom_seg/{{test_case}}.log",
    benchmark:
        f"{R}/benchmarks/export_dicom_seg/{{test_case}}.tsv"
    params:
        labels=LABELS,
        dicom=case_reference_dicom,
        kind="seg",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/export_dicom.py"


rule export_rtstruct:
    input:
        labels=f"{R}/predictions/{{test_case}}.nii.gz",
        source=case_source_series,
    output:
        rtstruct=f"{R}/dicom/{{test_case}}/structures.rtstruct.dcm",
    log:
        f"{R}/logs/export_rtstruct/{{test_case}}.log",
    benchmark:
        f"{R}/benchmarks/export_rtstruct/{{test_case}}.tsv"
    params:
        labels=LABELS,
        dicom=case_reference_dicom,
        kind="rtstruct",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/export_dicom.py"
