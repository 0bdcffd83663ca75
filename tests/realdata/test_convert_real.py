"""Conversion of real scanner data through the pipeline's convert step."""

from __future__ import annotations

import numpy as np
import pytest

from carve.imaging.convert import ConversionError, DicomOptions, convert_image, convert_label
from carve.imaging.io import read_image

pytestmark = pytest.mark.realdata


def test_hippocampus_image_and_label(shared_data, tmp_path):
    image = shared_data / "hippocampus10" / "imagesTr" / "hippocampus_001.nii.gz"
    label = shared_data / "hippocampus10" / "labelsTr" / "hippocampus_001.nii.gz"
    if not image.exists():
        image = sorted((shared_data / "hippocampus10" / "imagesTr").glob("*.nii.gz"))[0]
        label = shared_data / "hippocampus10" / "labelsTr" / image.name
    convert_image("h1", image, tmp_path / "image.nii.gz")
    counts = convert_label(
        "h1", label, tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", {1: "anterior", 2: "posterior"}
    )
    assert counts["anterior"] > 100 and counts["posterior"] > 100
    raw, g_raw = read_image(image)
    out, g_out = read_image(tmp_path / "image.nii.gz")
    np.testing.assert_array_equal(raw, out)
    assert g_raw.is_close(g_out, 1e-4, raw.shape)


def test_hippocampus_label_with_missing_config_label_is_refused(shared_data, tmp_path):
    image = sorted((shared_data / "hippocampus10" / "imagesTr").glob("*.nii.gz"))[0]
    label = shared_data / "hippocampus10" / "labelsTr" / image.name
    convert_image("h1", image, tmp_path / "image.nii.gz")
    with pytest.raises(ConversionError, match=r"case 'h1'.*value\(s\) \[2\] are not in the config"):
        convert_label("h1", label, tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", {1: "anterior"})
    assert not (tmp_path / "label.nii.gz").exists()


def test_tilted_uneven_ct_refused_by_default_and_resampled_on_request(shared_data, tmp_path):
    folder = shared_data / "dicom" / "dcm_qa_ct_ge"
    with pytest.raises(ConversionError, match="case 'ct1'.*dcm_qa_ct_ge"):
        convert_image("ct1", folder, tmp_path / "refused.nii.gz")
    assert not (tmp_path / "refused.nii.gz").exists()
    convert_image("ct1", folder, tmp_path / "ct.nii.gz", DicomOptions(uneven_spacing="resample"))
    ct, geometry = read_image(tmp_path / "ct.nii.gz")
    assert ct.ndim == 3 and ct.min() >= -3100 and ct.max() > 500  # Hounsfield units: bone is bright
    assert np.allclose(np.abs(np.linalg.det(geometry.direction_matrix)), 1.0)


def test_compressed_ct_series_converts_without_identifiers(shared_data, tmp_path):
    folder = shared_data / "ct" / "totalsegmentator_example" / "example_ct_dicom"
    convert_image("ct2", folder, tmp_path / "ct.nii.gz")
    ct, _ = read_image(tmp_path / "ct.nii.gz")
    assert ct.shape[0] == 20
    import pydicom

    ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    raw = (tmp_path / "ct.nii.gz").read_bytes()
    import gzip

    header = gzip.decompress(raw)[:352]
    for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
        if len(value) > 2:
            assert value.encode() not in header
