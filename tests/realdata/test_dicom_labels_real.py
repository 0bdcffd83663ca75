"""carve.imaging.dicom_labels / carve.export.dicom_export on real objects: dcmqi's CT SEGs and rt-utils' phantom
RTSTRUCT.

The reference masks (NRRD, written by dcmqi from the same segmentations) lie on the CT grid, so the comparison is
voxel by voxel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from carve.export.dicom_export import write_dicom_seg, write_rtstruct
from carve.imaging.convert import DicomOptions
from carve.imaging.dicom import read_dicom_series
from carve.imaging.dicom_labels import read_label_object
from carve.imaging.io import read_image

pytestmark = pytest.mark.realdata

SEGS = Path("dicom") / "dcmqi_ct3slice_seg" / "segmentations"
RT = Path("dicom") / "rtstruct_mock"
OVERLAP_NAMES = {1: "green", 2: "orange", 3: "purple", 4: "light_blue", 5: "dark_blue"}


@pytest.fixture(scope="module")
def ct(shared_data):
    folder = shared_data / SEGS / "ct-3slice"
    image, geometry = read_dicom_series(folder)
    return folder, image, geometry


def test_liver_seg_equals_the_reference_mask(shared_data, ct):
    _, image, geometry = ct
    labels = read_label_object(shared_data / SEGS / "liver.dcm", image.shape, geometry, {1: "liver"})
    reference, reference_geometry = read_image(shared_data / SEGS / "liver_seg.nrrd")
    assert reference.shape == image.shape and reference_geometry.is_close(geometry, 1e-3, shape=image.shape)
    assert int((labels == 1).sum()) == 107098  # liver voxels in the reference mask
    np.testing.assert_array_equal(labels, reference.astype(np.uint8))


def test_partial_overlaps_warn_and_keep_the_highest_label(shared_data, ct, caplog):
    _, image, geometry = ct
    with caplog.at_level(logging.WARNING, logger="carve.imaging.dicom"):
        labels = read_label_object(shared_data / SEGS / "partial_overlaps.dcm", image.shape, geometry, OVERLAP_NAMES)
    # dcmqi split the segments into three non-overlapping layers whose values are the segment numbers
    layers = np.stack([read_image(shared_data / SEGS / f"partial_overlaps-{i}.nrrd")[0] for i in (1, 2, 3)])
    n_overlap = int(((layers > 0).sum(axis=0) > 1).sum())
    assert n_overlap == 3106
    assert f"{n_overlap} voxel(s) are claimed by segments of several labels" in caplog.text
    np.testing.assert_array_equal(labels, layers.max(axis=0).astype(np.uint8))


@pytest.mark.parametrize(
    ("image_folder", "seg", "reference"),
    [
        ("23x38x3/image", "23x38x3/seg/label.seg", "23x38x3/nrrd/label.nrrd"),
        ("24x38x3/image", "sparse-labelmap-noppv.dcm", "sparse_labelmap_noppv_seg.nrrd"),
        ("24x38x3/image", "sparse-labelmap-ppv5.dcm", "sparse_labelmap_ppv5_seg.nrrd"),
    ],
)
def test_small_and_labelmap_segs_equal_their_references(shared_data, image_folder, seg, reference):
    image, geometry = read_dicom_series(shared_data / SEGS / image_folder)
    labels = read_label_object(shared_data / SEGS / seg, image.shape, geometry, {1: "Liver"})
    truth, _ = read_image(shared_data / SEGS / reference)
    assert labels.any()
    np.testing.assert_array_equal(labels, (truth == 1).astype(np.uint8))  # value 5 of ppv5 is pixel padding


def test_seg_written_for_the_real_ct_references_it_and_reads_back(shared_data, ct, tmp_path):
    folder, image, geometry = ct
    names = {1: "liver", 2: "spine", 3: "heart"}
    labels = read_image(shared_data / SEGS / "liver_spine_seg.nrrd")[0].astype(np.uint8)
    labels[read_image(shared_data / SEGS / "heart_seg.nrrd")[0] > 0] = 3
    path = write_dicom_seg(labels, folder, names, tmp_path / "segmentation.dcm")
    np.testing.assert_array_equal(read_label_object(path, image.shape, geometry, names), labels)
    seg = pydicom.dcmread(path)
    sources = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())}
    first = next(iter(sources.values()))
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID and seg.StudyInstanceUID == first.StudyInstanceUID
    instances = [r for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
    referenced = {r.ReferencedSOPInstanceUID for r in instances}
    assert referenced == set(sources)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position, np.asarray(sources[uid].ImagePositionPatient, dtype=float), atol=1e-3)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spine", "heart"]


def test_rtstruct_mock_reads_inside_the_phantom_and_round_trips(shared_data, tmp_path, caplog):
    folder = shared_data / RT
    image, geometry = read_dicom_series(folder, min_slices=2)
    frame_of_reference = pydicom.dcmread(folder / "ct_1.dcm", stop_before_pixels=True).FrameOfReferenceUID
    with caplog.at_level(logging.WARNING, logger="carve.imaging.dicom"):
        mask = read_label_object(
            folder / "rt.dcm", image.shape, geometry, {1: "roi-1"}, frame_of_reference_uid=frame_of_reference
        )
    assert "differs from the image's" in caplog.text  # rt-utils' mock names another frame of reference
    assert mask.sum(axis=(1, 2)).tolist() == [1443, 0]  # a square ring (outer and inner contour), first slice
    body, _ = ndimage.label(image > -500)
    phantom = body == np.argmax(np.bincount(body[body > 0]))
    assert phantom[mask > 0].all() and np.abs(image[mask > 0]).max() < 100  # water-like phantom material
    path = write_rtstruct(mask, folder, {1: "ROI-1"}, tmp_path / "structures.dcm", dicom=DicomOptions(min_slices=2))
    back = read_label_object(path, image.shape, geometry, {1: "roi-1"})
    dice = 2.0 * float(((back > 0) & (mask > 0)).sum()) / float((back > 0).sum() + (mask > 0).sum())
    assert dice > 0.95
