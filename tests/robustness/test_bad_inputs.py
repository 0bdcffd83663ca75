"""Bad input files and write faults: each is converted as documented or refused on one line naming the case, the
file and the reason, and a refusal writes nothing. docs/robustness.md lists every case with the message it gives.

Inputs are tiny and generated here, except where a real DICOM series from the shared data is damaged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from carve.imaging.convert import ConversionError, DicomOptions, convert_image, convert_label
from carve.imaging.dicom import write_dicom_series
from carve.imaging.io import Geometry, atomic_write_text, read_image, write_image

CASE = "c7"
LABELS = {1: "organ", 2: "vessel"}
AXES = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))  # array axis 0 along z (the DICOM slice normal)
GEOMETRY = Geometry((2.0, 1.0, 1.0), (-10.0, 5.0, 3.0), AXES)


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder``, hidden temporaries included (empty when the folder does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def refused(call, *args, **kwargs) -> str:
    """The one-line message of the ConversionError that ``call`` raises."""
    with pytest.raises(ConversionError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(f"case '{CASE}': "), message
    return message


def image_array(shape=(6, 10, 12), dtype=np.int16) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 1000).reshape(shape).astype(dtype) + 1


@pytest.fixture
def converted(tmp_path) -> tuple[Path, np.ndarray]:
    """A converted image (out/image.nii.gz) for label tests, and the label array that fits it."""
    write_image(tmp_path / "img.nii.gz", image_array(), GEOMETRY)
    out = tmp_path / "out"
    convert_image(CASE, tmp_path / "img.nii.gz", out / "image.nii.gz")
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[2:4, 3:7, 4:9] = 1
    labels[4, 5, 6] = 2
    return out, labels


def convert_label_to(out: Path, source: Path, name: str = "label.nii.gz"):
    return convert_label(CASE, source, out / "image.nii.gz", out / name, LABELS)


# ---- image files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, compress", [("cut.nii.gz", True), ("cut.nii", False)])
def test_truncated_nifti_refused_not_zero_filled(tmp_path, name, compress):
    """SimpleITK reads a cut NIfTI without a word and fills the missing voxels with zeros; carve refuses it."""
    write_image(tmp_path / name, image_array(), GEOMETRY, compress=compress)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    assert read_image(tmp_path / name)[0].shape == (6, 10, 12)  # what carve would have converted before
    message = refused(convert_image, CASE, tmp_path / name, tmp_path / "out" / "image.nii.gz")
    assert name in message
    assert "truncated" in message
    assert files_under(tmp_path / "out") == []


def test_corrupt_gzip_stream_refused(tmp_path):
    path = tmp_path / "flip.nii.gz"
    write_image(path, np.random.default_rng(0).normal(size=(6, 10, 12)).astype(np.float32), GEOMETRY)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(255 - b for b in data[len(data) // 2 : len(data) // 2 + 8])
    path.write_bytes(bytes(data))
    message = refused(convert_image, CASE, path, tmp_path / "out" / "image.nii.gz")
    assert "flip.nii.gz" in message and "truncated or corrupt gzip data" in message
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["cut.nrrd", "cut.mha"])
def test_truncated_nrrd_and_mha_refused(tmp_path, name):
    write_image(tmp_path / name, image_array(), GEOMETRY)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    message = refused(convert_image, CASE, tmp_path / name, tmp_path / "out" / "image.nii.gz")
    assert f"{name}: cannot be read as an image" in message
    assert "No such file" not in message  # ITK's stale errno line is not the reason
    assert files_under(tmp_path / "out") == []


def test_zero_byte_and_junk_image_files_refused(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    message = refused(convert_image, CASE, tmp_path / "empty.nii.gz", tmp_path / "out" / "image.nii.gz")
    assert message.endswith("empty.nii.gz: file is empty (0 bytes)")
    (tmp_path / "junk.nii").write_bytes(b"this is a text file, not an image\n" * 20)
    message = refused(convert_image, CASE, tmp_path / "junk.nii", tmp_path / "out" / "image.nii.gz")
    assert "junk.nii: cannot be read as NIfTI" in message
    assert files_under(tmp_path / "out") == []


def test_folder_without_dicom_refused(tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("no images here")
    (folder / "sub" / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    message = refused(convert_image, CASE, folder, tmp_path / "out" / "image.nii.gz")
    assert message == f"case '{CASE}': {folder}: no DICOM files found"
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(
    "which, damage, reason",
    [
        ("IM0001.dcm", "header", "IM0001.dcm (the header ends before its SeriesInstanceUID)"),  # first slice
        ("IM0006.dcm", "empty", "IM0006.dcm (0 bytes)"),  # last slice: would be dropped without a word
        ("IM0003.dcm", "pixels", "cannot decode pixel data of IM0003.dcm"),
    ],
)
def test_damaged_dicom_slice_refused_and_named(tmp_path, which, damage, reason):
    """A cut or empty file of a series is named; resampling uneven spacing must not paper over a lost slice."""
    folder = tmp_path / "series"
    write_dicom_series(image_array(), GEOMETRY, folder, uid_seed="dmg")
    path = folder / which
    data = path.read_bytes()
    path.write_bytes({"header": data[:300], "empty": b"", "pixels": data[:-50]}[damage])
    for options in (DicomOptions(), DicomOptions(uneven_spacing="resample")):
        message = refused(convert_image, CASE, folder, tmp_path / "out" / "image.nii.gz", dicom=options)
        assert str(folder) in message and reason in message
    assert files_under(tmp_path / "out") == []


def test_real_dicom_series_with_a_cut_file_refused(shared_data, tmp_path):
    source = shared_data / "dicom" / "dicom2nifti" / "hitachi" / "anatomical" / "001"
    folder = tmp_path / "hitachi"
    folder.mkdir()
    for path in sorted(source.iterdir()):
        shutil.copyfile(path, folder / path.name)  # not copytree: the shared files are read-only
    convert_image(CASE, folder, tmp_path / "whole" / "image.nii.gz")  # the intact copy converts
    last = folder / "004.dcm"
    last.write_bytes(last.read_bytes()[:400])
    message = refused(convert_image, CASE, folder, tmp_path / "out" / "image.nii.gz")
    assert "1 file(s) look like DICOM but cannot be read (truncated or corrupt): 004.dcm" in message
    assert files_under(tmp_path / "out") == []


def test_2d_image_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 12), np.float32)), str(tmp_path / "flat.nii.gz"))
    message = refused(convert_image, CASE, tmp_path / "flat.nii.gz", tmp_path / "out" / "image.nii.gz")
    assert "flat.nii.gz: is 2D with size (12, 10); carve needs a 3D volume" in message
    assert files_under(tmp_path / "out") == []


def test_4d_image_without_channels_refused(tmp_path):
    volume = sitk.GetImageFromArray(image_array().astype(np.float32))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(tmp_path / "two.nii.gz"))
    message = refused(convert_image, CASE, tmp_path / "two.nii.gz", tmp_path / "out" / "image.nii.gz")
    assert "two.nii.gz: is 4D" in message and "needs the config's `channels`" in message
    assert files_under(tmp_path / "out") == []


def test_rgb_nifti_and_rgb_dicom_refused(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    message = refused(convert_image, CASE, tmp_path / "rgb.nii.gz", tmp_path / "out" / "image.nii.gz")
    assert "rgb.nii.gz: has 3 components per voxel (RGB or vector)" in message
    paths = write_dicom_series(image_array(), GEOMETRY, tmp_path / "colour", uid_seed="rgb")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
        ds.save_as(path)
    message = refused(convert_image, CASE, tmp_path / "colour", tmp_path / "out" / "image.nii.gz")
    assert "IM0001.dcm is RGB with 3 samples per pixel (RGB/colour)" in message
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("bad, name", [(np.nan, "nan.nii.gz"), (np.inf, "inf.nii.gz"), (-np.inf, "inf.nrrd")])
def test_nan_or_infinite_voxels_refused(tmp_path, bad, name):
    array = image_array().astype(np.float32)
    array[1, 2, 3] = bad
    write_image(tmp_path / name, array, GEOMETRY)
    message = refused(convert_image, CASE, tmp_path / name, tmp_path / "out" / "image.nii.gz")
    assert message.endswith(f"{name}: 1 voxel(s) are NaN or infinite; fix or mask them")
    assert files_under(tmp_path / "out") == []


def test_constant_image_converted_with_a_warning(tmp_path, caplog):
    write_image(tmp_path / "flat.nii.gz", np.full((4, 5, 6), 7, np.int16), GEOMETRY)
    with caplog.at_level(logging.WARNING, logger="carve.imaging.convert"):
        convert_image(CASE, tmp_path / "flat.nii.gz", tmp_path / "out" / "image.nii.gz")
    assert f"case '{CASE}': {tmp_path / 'flat.nii.gz'}: the image is constant (value 7)" in caplog.text
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "image.nii.gz")[0], 7)


# ---- CT rescale beyond the stored type -----------------------------------------------------------------------------
def rescaled_series(folder: Path, slope, intercept) -> np.ndarray:
    """A CT series of int16 values near both ends of the type, with the given rescale; returns the stored values."""
    stored = np.full((4, 6, 6), 30000, np.int16)
    stored[0, 0, 0], stored[1, 1, 1], stored[2, 2, 2] = -30000, 0, 1234
    paths = write_dicom_series(stored, GEOMETRY, folder, modality="CT", uid_seed=folder.name)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(path)
    return stored


@pytest.mark.parametrize("slope, intercept, dtype", [(2, -1024, np.int32), (-3, 5, np.int32), (1e6, 0.5, np.float32)])
def test_rescale_beyond_int16_is_exact_in_a_wider_type(tmp_path, slope, intercept, dtype):
    stored = rescaled_series(tmp_path / "ct", slope, intercept)
    convert_image(CASE, tmp_path / "ct", tmp_path / "out" / "image.nii.gz")
    array, _ = read_image(tmp_path / "out" / "image.nii.gz")
    expected = stored.astype(np.float64) * slope + intercept
    assert array.dtype == dtype
    assert np.abs(array.astype(np.float64) - expected).max() <= np.abs(expected).max() * 1e-7


def test_rescale_beyond_float32_refused(tmp_path):
    """Values past float32 would have become infinite, then zero in the NIfTI file; carve refuses them."""
    rescaled_series(tmp_path / "ct", "1e300", 0)
    message = refused(convert_image, CASE, tmp_path / "ct", tmp_path / "out" / "image.nii.gz")
    assert "voxel(s) lie beyond the float32 range (up to 3e+304); check the rescale slope and intercept" in message
    assert str(tmp_path / "ct") in message
    assert files_under(tmp_path / "out") == []


# ---- labels against their image --------------------------------------------------------------------------------
def rotated(degrees: float) -> tuple[tuple[float, ...], ...]:
    t = np.deg2rad(degrees)
    turn = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    return tuple(map(tuple, turn @ np.asarray(AXES)))


NEAR = {  # label grids within the 2 mm that are resampled (nearest neighbour)
    "origin 0.4 mm": Geometry(GEOMETRY.spacing_mm, (-10.0, 5.4, 3.0), AXES),
    "spacing 1.02 mm": Geometry((2.0, 1.0, 1.02), GEOMETRY.origin_mm, AXES),
    "direction 1 degree": Geometry(GEOMETRY.spacing_mm, GEOMETRY.origin_mm, rotated(1.0)),
}
FAR = {  # beyond: refused
    "origin 5 mm": (
        Geometry(GEOMETRY.spacing_mm, (-5.0, 5.0, 3.0), AXES),
        "origin (-5.0, 5.0, 3.0) vs (-10.0, 5.0, 3.0)",
    ),
    "spacing 1.5 mm": (
        Geometry((2.0, 1.0, 1.5), GEOMETRY.origin_mm, AXES),
        "spacing (2.0, 1.0, 1.5) vs (2.0, 1.0, 1.0)",
    ),
    "direction 20 degrees": (Geometry(GEOMETRY.spacing_mm, GEOMETRY.origin_mm, rotated(20.0)), "20.00 degrees apart"),
}


@pytest.mark.parametrize("what", sorted(NEAR))
def test_label_grid_within_tolerance_resampled(converted, what, caplog):
    out, labels = converted
    write_image(out.parent / "lab.nii.gz", labels, NEAR[what])
    with caplog.at_level(logging.WARNING, logger="carve.imaging.convert"):
        counts = convert_label_to(out, out.parent / "lab.nii.gz")
    assert "label grid differs from the image grid" in caplog.text and f"case '{CASE}'" in caplog.text
    back = read_image(out / "label.nii.gz")[0]
    assert (back != labels).mean() < 0.05  # the same structure, at most a rim of voxels moved
    assert counts["organ"] == pytest.approx((labels == 1).sum(), rel=0.2)


@pytest.mark.parametrize("what", sorted(FAR))
def test_label_grid_beyond_tolerance_refused(converted, what):
    out, labels = converted
    geometry, detail = FAR[what]
    write_image(out.parent / "lab.nii.gz", labels, geometry)
    message = refused(convert_label_to, out, out.parent / "lab.nii.gz")
    assert "lab.nii.gz: label does not match its image image.nii.gz" in message and detail in message
    assert "the grids differ by more than the 2.0 mm that carve resamples" in message
    assert files_under(out) == ["image.nii.gz"]


def test_label_of_another_shape_resampled_or_refused(converted):
    out, labels = converted
    fine = labels.repeat(2, axis=1).repeat(2, axis=2)  # the same box at half the in-plane spacing
    origin = np.add(GEOMETRY.origin_mm, (0.0, -0.25, -0.25))
    write_image(out.parent / "fine.nii.gz", fine, Geometry((2.0, 0.5, 0.5), tuple(origin), AXES))
    convert_label_to(out, out.parent / "fine.nii.gz")
    np.testing.assert_array_equal(read_image(out / "label.nii.gz")[0], labels)
    write_image(out.parent / "small.nii.gz", labels[:3, :5, :6], GEOMETRY)
    message = refused(convert_label_to, out, out.parent / "small.nii.gz", "other.nii.gz")
    assert "small.nii.gz: label does not match its image image.nii.gz: shape (3, 5, 6) vs (6, 10, 12)" in message
    assert files_under(out) == ["image.nii.gz", "label.nii.gz"]


@pytest.mark.parametrize(
    "value, dtype, reason",
    [
        (7, np.uint8, r"label value(s) [7] are not in the config's labels {1: 'organ', 2: 'vessel'}"),
        (-1, np.int16, "label values must lie in 0..255, found -1..2"),
        (300, np.int16, "label values must lie in 0..255, found 0..300"),
        (
            0.7,
            np.float32,
            "label has non-integer values (off by up to 0.3); a label map must hold integer label values",
        ),
        (np.nan, np.float32, "1 voxel(s) are NaN or infinite"),
    ],
)
def test_bad_label_values_refused(converted, value, dtype, reason):
    out, labels = converted
    bad = labels.astype(dtype)
    bad[0, 0, 0] = value
    write_image(out.parent / "bad.nii.gz", bad, GEOMETRY)
    message = refused(convert_label_to, out, out.parent / "bad.nii.gz")
    assert f"{out.parent / 'bad.nii.gz'}: {reason}" in message
    assert files_under(out) == ["image.nii.gz"]


def test_float_labels_close_to_integers_rounded(converted, caplog):
    out, labels = converted
    write_image(out.parent / "soft.nii.gz", labels.astype(np.float32) * 0.9999, GEOMETRY)
    with caplog.at_level(logging.WARNING, logger="carve.imaging.convert"):
        convert_label_to(out, out.parent / "soft.nii.gz")
    assert "float label values rounded to integers (max change 0.0002)" in caplog.text
    np.testing.assert_array_equal(read_image(out / "label.nii.gz")[0], labels)


def test_empty_label_of_a_training_case_kept_with_a_warning(converted, caplog):
    out, labels = converted
    write_image(out.parent / "none.nii.gz", np.zeros_like(labels), GEOMETRY)
    with caplog.at_level(logging.WARNING, logger="carve.imaging.convert"):
        counts = convert_label_to(out, out.parent / "none.nii.gz")
    assert counts == {"organ": 0, "vessel": 0}
    assert f"case '{CASE}': {out.parent / 'none.nii.gz'}: the label is empty (no foreground voxel)" in caplog.text
    assert not read_image(out / "label.nii.gz")[0].any()


def test_label_of_one_voxel_kept_in_place(converted):
    out, labels = converted
    one = np.zeros_like(labels)
    one[5, 9, 11] = 2  # the far corner
    write_image(out.parent / "one.nii.gz", one, GEOMETRY)
    assert convert_label_to(out, out.parent / "one.nii.gz") == {"organ": 0, "vessel": 1}
    assert np.argwhere(read_image(out / "label.nii.gz")[0]).tolist() == [[5, 9, 11]]


# ---- faults while writing ----------------------------------------------------------------------------------------
DISK_FULL = """
import json, resource, signal, sys
import numpy as np
from pathlib import Path
from carve.imaging.io import Geometry, atomic_write_text, write_image
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # every file stops at 8 KiB, like a disk that is full
out, errors = Path(sys.argv[1]), {}
noise = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32)  # 64 KiB that barely compress
writes = {
    "image.nii.gz": lambda: write_image(out / "image.nii.gz", noise, Geometry((1.0, 1.0, 1.0))),
    "image.nii": lambda: write_image(out / "image.nii", noise, Geometry((1.0, 1.0, 1.0)), compress=False),
    "image.nrrd": lambda: write_image(out / "image.nrrd", noise, Geometry((1.0, 1.0, 1.0))),
    "plans.json": lambda: atomic_write_text(out / "plans.json", "x" * 20000),
}
for name, write in writes.items():
    try:
        write()
        errors[name] = None
    except Exception as err:
        errors[name] = [type(err).__name__, str(err), isinstance(err, OSError)]
print(json.dumps(errors))
"""


def test_full_disk_gives_a_clear_error_and_leaves_no_file(tmp_path):
    """A file size limit (RLIMIT_FSIZE) makes every write past 8 KiB fail, as a full disk does, in a subprocess.

    ITK's NIfTI writer ignores the failed write and used to leave a cut file under the output's name."""
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout)
    for name in ("image.nii.gz", "image.nii", "image.nrrd", "plans.json"):
        assert errors[name] is not None, f"{name}: the write did not fail"
        kind, message, is_os_error = errors[name]
        assert kind == "WriteError" and is_os_error and "\n" not in message  # carve.errors.WriteError: an OSError
        assert f"cannot write {out / name}: " in message
    assert "the written file came out incomplete (disk full?)" in errors["image.nii.gz"][1]
    assert "ITK could not write it" in errors["image.nrrd"][1]
    assert "(disk full, quota or file size limit reached)" in errors["plans.json"][1]
    assert files_under(out) == []  # neither a cut output nor a temporary is left


def test_unwritable_results_folder_named(tmp_path):
    """A results folder that cannot be created or written: the error names the output. Tests may run as root,
    where a read-only mode does not stop writes, so a file standing where a folder must be is used as well."""
    (tmp_path / "results").write_text("a file, not a folder")
    target = tmp_path / "results" / "nifti" / CASE / "image.nii.gz"
    with pytest.raises(OSError) as err:
        write_image(target, image_array(), GEOMETRY)
    assert str(err.value) == f"[Errno 20] cannot write {target}: {tmp_path / 'results'} is a file, not a folder"
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'results' / 'plans.json'}: .* is a file"):
        atomic_write_text(tmp_path / "results" / "plans.json", "{}")
    if os.geteuid() != 0:  # a read-only folder stops everyone but root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match=f"cannot write {locked / 'a.nii.gz'}: Permission denied"):
            write_image(locked / "a.nii.gz", image_array(), GEOMETRY)
        locked.chmod(0o700)
        assert files_under(locked) == []
    assert (tmp_path / "results").read_text() == "a file, not a folder"


def test_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError) as err:
        write_image(tmp_path / "out" / "image.nii.gz", image_array(), GEOMETRY)
    expected = f"cannot write {tmp_path / 'out' / 'image.nii.gz'}: No space left on device (disk full, quota"
    assert expected in str(err.value) and err.value.errno == errno.ENOSPC
    assert files_under(tmp_path / "out") == []


def test_step_turns_a_write_fault_into_one_line(tmp_path):
    """What a Snakemake job prints: run_step's one line, no traceback."""
    from carve.pipeline.workflow import run_step

    write_image(tmp_path / "img.nii.gz", image_array(), GEOMETRY)
    (tmp_path / "results").write_text("in the way")
    target = tmp_path / "results" / "nifti" / CASE / "image.nii.gz"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit) as exit_:
            run_step(None, convert_image, CASE, tmp_path / "img.nii.gz", target)
    finally:  # run_step configures logging for a whole job process; give pytest its handlers back
        root.handlers[:] = handlers
        root.setLevel(level)
    assert str(exit_.value) == (
        f"carve error: [Errno 20] cannot write {target}: {tmp_path / 'results'} is a file, not a folder"
    )
