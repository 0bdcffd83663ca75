"""carve.imaging.dicom_labels / carve.export.dicom_export: DICOM-SEG and RTSTRUCT round trips on a synthetic
oblique series."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from scipy.spatial.transform import Rotation

from carve.export.dicom_export import mask_contours, write_dicom_seg, write_rtstruct
from carve.imaging.dicom import DicomError, read_dicom_series, write_dicom_series
from carve.imaging.dicom_labels import find_label_object, read_label_object
from carve.imaging.io import Geometry

NAMES = {1: "Liver", 3: "spleen", 7: "kidney"}
SHAPE = (7, 40, 36)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, np.ndarray, Geometry, np.ndarray]:
    """An oblique anisotropic MR series with file names shuffled (file order != slice order) and its labels."""
    folder = tmp_path_factory.mktemp("series")
    direction = Rotation.from_euler("xyz", (12.0, -20.0, 31.0), degrees=True).as_matrix()
    geometry = Geometry((2.5, 0.8, 0.9), (-12.0, 30.5, 7.25), tuple(map(tuple, direction)))
    rng = np.random.default_rng(3)
    paths = write_dicom_series(rng.integers(0, 400, SHAPE).astype(np.int16), geometry, folder, uid_seed="labels")
    names = [p.name for p in paths]
    random.Random(5).shuffle(names)
    for p in paths:
        p.rename(p.with_suffix(".tmp"))
    for p, name in zip(paths, names, strict=True):
        p.with_suffix(".tmp").rename(folder / name)
    image, grid = read_dicom_series(folder)
    k, r, c = np.meshgrid(*(np.arange(s, dtype=float) for s in image.shape), indexing="ij")
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[((k - 3) / 2.6) ** 2 + ((r - 14) / 9) ** 2 + ((c - 12) / 8) ** 2 <= 1] = 1
    ring = ((r - 27) / 8) ** 2 + ((c - 24) / 9) ** 2
    labels[(np.abs(k - 3.5) <= 2.5) & (ring <= 1) & (ring > 0.3)] = 3  # a ring: its hole needs XOR
    labels[1, 2:5, 30:34] = 7  # a small block at the volume's edge
    return folder, image, grid, labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_seg_round_trip_is_exact_and_references_the_source(series, tmp_path):
    folder, image, grid, labels = series
    path = write_dicom_seg(labels, folder, NAMES, tmp_path / "seg.dcm", series_description="test seg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]  # atomic: no temporary file left
    back = read_label_object(path, image.shape, grid, NAMES)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)

    seg = pydicom.dcmread(path)
    sources = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p) for p in sorted(folder.iterdir()))}
    first = next(iter(sources.values()))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.SeriesDescription == "test seg"
    instances = [r for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
    referenced = {r.ReferencedSOPInstanceUID for r in instances}
    assert referenced == set(sources)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame points at the image at its own position
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position, np.asarray(sources[uid].ImagePositionPatient, dtype=float), atol=1e-3)
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [s.SegmentLabel for s in segments.values()] == ["Liver", "spleen", "kidney"]
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "carve" for s in segments.values())
    patient = {e.keyword for e in seg if e.tag.group == 0x0010}
    assert patient <= {e.keyword for e in first if e.tag.group == 0x0010}  # nothing about the patient added


def test_rtstruct_round_trip_dice_and_structure(series, tmp_path):
    folder, image, grid, labels = series
    path = write_rtstruct(labels, folder, NAMES, tmp_path / "rt.dcm")
    back = read_label_object(path, image.shape, grid, NAMES)
    for value in NAMES:
        assert dice(back == value, labels == value) > 0.95, NAMES[value]
    assert not back[3, 27, 24]  # the ring's hole stays empty

    rt = pydicom.dcmread(path)
    assert rt.Modality == "RTSTRUCT"
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["Liver", "spleen", "kidney"]
    colours = [tuple(int(v) for v in rc.ROIDisplayColor) for rc in rt.ROIContourSequence]
    assert len(set(colours)) == 3
    sources = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p) for p in sorted(folder.iterdir()))}
    normal = grid.direction_matrix[:, 0]
    n_contours = 0
    for rc in rt.ROIContourSequence:
        for contour in rc.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            image_ds = sources[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            origin = np.asarray(image_ds.ImagePositionPatient, dtype=float)
            np.testing.assert_allclose((points - origin) @ normal, 0.0, atol=1e-3)  # in its image's plane
            n_contours += 1
    assert n_contours >= 5 + 6 * 2 + 1  # the ring has an outer and an inner contour per slice
    refs = rt.ReferencedFrameOfReferenceSequence[0]
    assert refs.FrameOfReferenceUID == next(iter(sources.values())).FrameOfReferenceUID
    series_ref = refs.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence} == set(sources)


def test_names_match_case_insensitively_or_by_number(series, tmp_path):
    folder, image, grid, labels = series
    path = write_dicom_seg(labels, folder, NAMES, tmp_path / "seg.dcm")
    # segments 1 'Liver', 2 'spleen', 3 'kidney': all by name, whatever the case
    renamed = read_label_object(path, image.shape, grid, {2: "LIVER", 4: "SPLEEN", 7: "KIDNEY"})
    np.testing.assert_array_equal(renamed, np.select([labels == 1, labels == 3, labels == 7], [2, 4, 7], 0))
    # 'spleen' matches no name: its segment number 2 is a label value no name claimed
    mixed = read_label_object(path, image.shape, grid, {1: "liver", 2: "organ", 7: "Kidney"})
    np.testing.assert_array_equal(mixed, np.select([labels == 1, labels == 3, labels == 7], [1, 2, 7], 0))
    with pytest.raises(DicomError, match=r"segment\(s\) 2 'spleen' match no label"):  # label 2 is taken by 'liver'
        read_label_object(path, image.shape, grid, {2: "liver", 7: "kidney"})
    with pytest.raises(DicomError) as err:
        read_label_object(path, image.shape, grid, {1: "liver", 5: "heart"})
    message = str(err.value)
    assert "'spleen'" in message and "'kidney'" in message and "'heart'" in message and "seg.dcm" in message


def _highdicom_seg(folder: Path, array: np.ndarray, affine: np.ndarray, names: list[str], **kwargs) -> pydicom.Dataset:
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    algorithm = hd.AlgorithmIdentificationSequence("test", codes.DCM.ArtificialIntelligence, "1")
    descriptions = [
        hd.seg.SegmentDescription(i + 1, n, codes.SCT.Tissue, codes.SCT.Tissue, "AUTOMATIC", algorithm)
        for i, n in enumerate(names)
    ]
    channels = {"SegmentNumber": list(range(1, len(names) + 1))} if array.ndim == 4 else None
    volume = hd.Volume(array, affine, "PATIENT", sources[0].FrameOfReferenceUID, channels=channels)
    kind = kwargs.pop("segmentation_type", "BINARY")
    uids = (hd.UID(), 9, hd.UID(), 1)
    return hd.seg.Segmentation(sources, volume, kind, descriptions, *uids, "t", "t", "1", "1", **kwargs)


def test_overlapping_segments_get_the_highest_label_value(series, tmp_path, caplog):
    folder, image, grid, _ = series
    stacked = np.zeros((*image.shape, 3), dtype=np.uint8)
    stacked[1:5, 5:20, 5:20, 0] = 1  # 'a' -> label 9
    stacked[2:6, 10:25, 10:25, 1] = 1  # 'b' -> label 4
    stacked[3, 15:18, 0:30, 2] = 1  # 'c' -> label 6
    path = tmp_path / "overlap.dcm"
    _highdicom_seg(folder, stacked, grid.affine, ["a", "b", "c"]).save_as(path)
    with caplog.at_level(logging.WARNING, logger="carve.imaging.dicom"):
        back = read_label_object(path, image.shape, grid, {9: "A", 4: "B", 6: "C"})
    claims = stacked.sum(axis=-1)
    expected = np.max(stacked * np.array([9, 4, 6], dtype=np.uint8), axis=-1)
    np.testing.assert_array_equal(back, expected)
    n_overlap = int((claims > 1).sum())
    assert n_overlap > 0 and f"{n_overlap} voxel(s) are claimed by segments of several labels" in caplog.text


def test_seg_at_finer_in_plane_resolution_is_resampled_by_position(series, tmp_path):
    folder, image, grid, labels = series
    fine = np.repeat(np.repeat(labels == 1, 2, axis=1), 2, axis=2).astype(np.uint8)
    half = grid.with_spacing((grid.spacing_mm[0], grid.spacing_mm[1] / 2, grid.spacing_mm[2] / 2))
    shift = grid.index_to_world(np.array([0.0, -0.25, -0.25]))[0]  # fine pixel centres inside the coarse pixels
    fine_geometry = Geometry(half.spacing_mm, tuple(shift), grid.direction)
    path = tmp_path / "fine.dcm"
    _highdicom_seg(folder, fine, fine_geometry.affine, ["liver"]).save_as(path)
    back = read_label_object(path, image.shape, grid, {1: "liver"})
    np.testing.assert_array_equal(back, (labels == 1).astype(np.uint8))


def test_fractional_segments_are_thresholded_at_one_half(series, tmp_path):
    folder, image, grid, _ = series
    probability = np.zeros(image.shape, dtype=np.float32)
    probability[2:5, 10:20, 10:20] = 0.8
    probability[2:5, 20:25, 10:20] = 0.3
    path = tmp_path / "fractional.dcm"
    _highdicom_seg(folder, probability, grid.affine, ["liver"], segmentation_type="FRACTIONAL").save_as(path)
    back = read_label_object(path, image.shape, grid, {2: "liver"})
    np.testing.assert_array_equal(back, np.where(probability >= 0.5, 2, 0))


def test_objects_off_the_image_slice_planes_are_refused(series, tmp_path):
    folder, image, grid, labels = series
    off = Geometry(grid.spacing_mm, tuple(grid.index_to_world(np.array([0.4, 0.0, 0.0]))[0]), grid.direction)
    path = tmp_path / "off.dcm"
    _highdicom_seg(folder, (labels == 1).astype(np.uint8), off.affine, ["liver"]).save_as(path)
    with pytest.raises(DicomError, match=r"off the image's slice planes"):
        read_label_object(path, image.shape, grid, {1: "liver"})
    rt = pydicom.dcmread(write_rtstruct(labels, folder, NAMES, tmp_path / "rt.dcm"))
    contour = rt.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) + 1.0 * grid.direction_matrix[:, 0]
    contour.ContourData = [f"{v:.6f}" for v in points.ravel()]
    rt.save_as(tmp_path / "rt_off.dcm")
    with pytest.raises(DicomError, match=r"contour 1 lies up to 1 mm off"):
        read_label_object(tmp_path / "rt_off.dcm", image.shape, grid, NAMES)


def test_find_label_object_in_a_folder(series, tmp_path):
    folder, image, grid, labels = series
    case = tmp_path / "case"
    shutil.copytree(folder, case)
    assert find_label_object(case) is None
    with pytest.raises(DicomError, match="not a DICOM-SEG or RTSTRUCT"):
        read_label_object(case, image.shape, grid, NAMES)
    seg = write_dicom_seg(labels, folder, NAMES, case / "sub" / "seg.dcm")
    assert find_label_object(case) == seg
    np.testing.assert_array_equal(read_label_object(case, image.shape, grid, NAMES), labels)
    write_rtstruct(labels, folder, NAMES, case / "rt.dcm")
    with pytest.raises(DicomError, match=r"holds 2 DICOM-SEG/RTSTRUCT objects \(rt.dcm, sub/seg.dcm\)"):
        find_label_object(case)


def test_labels_on_single_slices_round_trip(series, tmp_path):
    folder, image, grid, _ = series
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[2, 5:9, 6:10] = 1  # one frame per segment in the SEG
    labels[4, 20:22, 3:5] = 3
    for write in (write_dicom_seg, write_rtstruct):
        path = write(labels, folder, NAMES, tmp_path / f"{write.__name__}.dcm")
        np.testing.assert_array_equal(read_label_object(path, image.shape, grid, NAMES), labels)


def test_empty_labels_and_bad_inputs(series, tmp_path):
    folder, image, grid, labels = series
    empty = np.zeros(image.shape, dtype=np.uint8)
    path = write_dicom_seg(empty, folder, NAMES, tmp_path / "empty.dcm")
    assert [s.SegmentLabel for s in pydicom.dcmread(path).SegmentSequence] == ["Liver"]
    np.testing.assert_array_equal(read_label_object(path, image.shape, grid, NAMES), empty)
    with pytest.raises(ValueError, match=r"labels have shape \(7, 40, 35\)"):
        write_dicom_seg(labels[:, :, :35], folder, NAMES, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\] have no name"):
        write_rtstruct(labels, folder, {1: "liver", 3: "spleen"}, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_mask_contours_fill_back_to_the_mask():
    from skimage.draw import polygon

    mask = np.zeros((20, 24), dtype=bool)
    mask[3:15, 4:18] = True
    mask[6:11, 8:13] = False  # a hole
    mask[8, 10] = True  # an island inside the hole
    mask[17, 0], mask[18, 1] = True, True  # diagonal neighbours at the border
    contours = mask_contours(mask)
    assert len(contours) == 5
    filled = np.zeros_like(mask)
    for points in contours:
        rr, cc = polygon(points[:, 0], points[:, 1], shape=mask.shape)
        filled[rr, cc] ^= True
    np.testing.assert_array_equal(filled, mask)
    assert len(contours[0]) < 2 * (12 + 14)  # collinear points dropped
