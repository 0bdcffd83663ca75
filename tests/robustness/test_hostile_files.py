"""Hostile files: a model file that would run code when loaded, headers that declare absurd sizes, and files that
are not what their names say. Each is refused before it can act, with one line naming the file."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

import carve.imaging.dicom
from carve.imaging.convert import ConversionError, convert_image
from carve.imaging.dicom import read_dicom_series, write_dicom_series
from carve.imaging.io import Geometry
from carve.training.network import load_model, load_payload, save_model

GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)))


class CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: code of the file's choosing runs and leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def one_line_value_error(call, *args) -> str:
    with pytest.raises(ValueError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message and "\x1b" not in message, message  # no multi-line torch advice, no colour codes
    return message


# ---- model files ---------------------------------------------------------------------------------------------------
def test_model_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "models" / "fold_0" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": "carve-unet3d", "version": 1, "state_dict": {}, "extra": CreatesFile(marker)}, path)
    message = one_line_value_error(load_payload, path)
    assert message == (
        f"model file {path} refused: it holds more than tensors and plain data (it asks for io.open), and "
        "unpickling it could run code; carve loads only weight files it wrote"
    )
    one_line_value_error(load_model, path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unguarded load runs the file's code
    assert marker.exists()


def test_plain_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": CreatesFile(marker)}, protocol=2))
    message = one_line_value_error(load_payload, path)
    assert f"model file {path} refused: it holds more than tensors and plain data (it asks for io.open)" in message
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the control
    assert marker.exists()


def test_model_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "numpy.pt"
    torch.save({"format": "carve-unet3d", "state_dict": {"w": np.zeros(3)}}, path)
    message = one_line_value_error(load_payload, path)
    assert "(it asks for numpy." in message and "unpickling it could run code" in message


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "is empty (0 bytes)"),
        (b"weights, honestly\n", "cannot be read (corrupt, or not a carve weight file): pickle opcode 119 is not"),
        ("half", "cannot be read (corrupt, or not a carve weight file): RuntimeError: PytorchStreamReader failed"),
    ],
)
def test_broken_model_files_named(tmp_path, content, reason):
    path = tmp_path / "model.pt"
    if content == "half":
        from carve.training.network import NetworkConfig, UNet3D

        config = NetworkConfig(1, 2, 4, 4, ((1, 1, 1),), ((3, 3, 3),))
        save_model(path, UNet3D(config), config, {})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    assert one_line_value_error(load_model, path).startswith(f"model file {path} {reason}")


def test_model_error_reaches_the_user_as_one_line(tmp_path):
    from carve.pipeline.workflow import run_step

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"x": CreatesFile(marker)}, path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit) as exit_:
            run_step(None, load_model, path)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert str(exit_.value).startswith(f"carve error: model file {path} refused: ")
    assert not marker.exists()


# ---- DICOM headers that declare absurd sizes -----------------------------------------------------------------------
@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if pixel data is decoded: the refusal must come from the headers alone."""

    def decode(*args, **kwargs):
        raise AssertionError("pixel data decoded before the header checks")

    monkeypatch.setattr(carve.imaging.dicom, "_decode", decode)


def edited_series(folder: Path, first_only: bool = False, **changes) -> list[Path]:
    paths = write_dicom_series(np.zeros((4, 6, 6), np.int16), GEOMETRY, folder, uid_seed=folder.name)
    for path in paths[:1] if first_only else paths:
        ds = pydicom.dcmread(path)
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(path)
    return paths


@pytest.mark.parametrize(
    "changes, first_only, gib",
    [
        ({"Rows": 65535, "Columns": 65535}, False, "32.0"),  # 4 slices of 65535^2 at 16 bits
        ({"NumberOfFrames": 2**31 - 1}, True, "144.0"),  # one file claims two thousand million frames
        # 1 bit per pixel: 0.7 GiB as stored, but pydicom unpacks it to a byte per pixel
        ({"Rows": 40000, "Columns": 40000, "BitsAllocated": 1, "BitsStored": 1, "HighBit": 0}, False, "6.0"),
    ],
)
def test_dicom_declaring_a_huge_size_refused_before_decoding(tmp_path, no_decoding, changes, first_only, gib):
    folder = tmp_path / "huge"
    edited_series(folder, first_only, **changes)
    with pytest.raises(ConversionError) as err:
        convert_image("h1", folder, tmp_path / "out" / "image.nii.gz")
    message = str(err.value)
    assert message.startswith(f"case 'h1': {folder}: series ") and "\n" not in message
    assert f"headers declare {gib} GiB of pixel data (limit 2.0 GiB); refusing before decoding" in message
    assert not (tmp_path / "out").exists()


def test_fifo_in_a_dicom_folder_is_skipped_not_read(tmp_path):
    """A named pipe would block a reader forever; the scan skips everything that is not a regular file."""
    folder = tmp_path / "series"
    edited_series(folder)
    os.mkfifo(folder / "IM9999.dcm")
    volume, _ = read_dicom_series(folder)
    assert volume.shape == (4, 6, 6)


# ---- NIfTI headers that declare more than the file holds -----------------------------------------------------------
def nifti_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """A valid NIfTI header that declares ``shape`` float32 voxels, followed by only 64 of them."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    data = header.binaryblock + b"\0" * 4 + np.ones(64, np.float32).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_nifti_declaring_a_huge_size_refused_before_reading(tmp_path, monkeypatch, name):
    """SimpleITK would allocate the declared 3.2 GiB and fill what is missing with zeros."""
    import carve.imaging.convert

    def no_reading(*args, **kwargs):
        raise AssertionError("the image was read before its size was checked")

    monkeypatch.setattr(carve.imaging.convert, "read_image", no_reading)
    nifti_declaring(tmp_path / name, (1000, 1000, 860))
    with pytest.raises(ConversionError) as err:
        convert_image("h1", tmp_path / name, tmp_path / "out" / "image.nii.gz")
    message = str(err.value)
    assert message.startswith(f"case 'h1': {tmp_path / name}: ") and "\n" not in message
    assert "the header declares 1000x1000x860 voxels of float32 (3.2 GiB)" in message
    assert not (tmp_path / "out").exists()
