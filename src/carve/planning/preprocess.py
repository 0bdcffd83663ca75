"""Per-case preprocessing: canonical orientation, intensity normalisation and resampling to the plan's spacing.

Preprocessed cases are stored as ``.npz`` (no pickles): ``image`` (C, z, y, x) float32, ``label``
(z, y, x) uint8 when known, and the resampled grid's geometry; all in the canonical orientation
(:mod:`carve.imaging.orientation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from carve.errors import InputError
from carve.imaging.io import Geometry, atomic_write_bytes
from carve.imaging.resample import resample_image, resample_labels


def normalise(image: np.ndarray, scheme: Mapping) -> np.ndarray:
    """Normalise intensities as the plan says (``ct``: clip and z-score; ``zscore_per_image``)."""
    image = np.asarray(image, dtype=np.float32)
    name = scheme["scheme"]
    if name == "ct":
        lo, hi = scheme["clip"]
        return ((np.clip(image, lo, hi) - scheme["mean"]) / scheme["std"]).astype(np.float32)
    if name == "zscore_per_image":
        mean = float(image.mean(dtype=np.float64))
        std = float(image.std(dtype=np.float64))
        return ((image - mean) / max(std, 1e-8)).astype(np.float32)
    raise InputError(f"unknown normalisation scheme '{name}'")


def preprocess_image(image: np.ndarray, geometry: Geometry, plans: Mapping) -> tuple[np.ndarray, Geometry]:
    """Normalise each channel and resample; takes (z, y, x) or (C, z, y, x), returns (C, z, y, x) float32."""
    channels = image[None] if image.ndim == 3 else image
    schemes = plans["normalisation"]
    if len(schemes) != channels.shape[0]:
        raise InputError(f"the plans normalise {len(schemes)} channel(s), the image has {channels.shape[0]}")
    out, new_geometry = [], geometry
    for channel, scheme in zip(channels, schemes, strict=True):
        resampled, new_geometry = resample_image(
            normalise(channel, scheme), geometry, plans["target_spacing_mm"], order=3
        )
        out.append(resampled.astype(np.float32))
    return np.stack(out), new_geometry


def preprocess_labels(labels: np.ndarray, geometry: Geometry, plans: Mapping) -> np.ndarray:
    values = range(int(plans["n_classes"]))
    out, _ = resample_labels(labels, geometry, plans["target_spacing_mm"], values=values)
    return out.astype(np.uint8)


def save_case(path: Path, image: np.ndarray, geometry: Geometry, labels: np.ndarray | None = None) -> None:
    import io

    buffer = io.BytesIO()
    arrays = {
        "image": image.astype(np.float32),
        "spacing_mm": np.asarray(geometry.spacing_mm),
        "origin_mm": np.asarray(geometry.origin_mm),
        "direction": geometry.direction_matrix,
    }
    if labels is not None:
        arrays["label"] = labels.astype(np.uint8)
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def case_name(path: str | Path) -> str:
    """The case a preprocessed file holds: its name without ``.npz``."""
    return Path(path).name.removesuffix(".npz")


def map_case_image(path: Path) -> np.ndarray:
    """The stored ``image`` of a preprocessed case, memory-mapped read-only instead of read.

    :func:`save_case` stores its arrays uncompressed, so the image's bytes lie contiguous in the file: a sampler
    over many images then keeps only the pages it touches, which the kernel can drop again, instead of every image
    in the job's own memory. A member that is compressed, or a header version this does not parse (a file written
    by something else), is read instead.
    """
    import zipfile

    path = Path(path)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("image.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return _read_image(path)
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError("no local file header for image.npy")
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
            f.seek(start + int.from_bytes(local[28:30], "little"))
            member_start = f.tell()
            version = np.lib.format.read_magic(f)
            if version not in readers:
                return _read_image(path)
            shape, fortran, dtype = readers[version](f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("image.npy holds Python objects")
        if offset - member_start + int(np.prod(shape)) * dtype.itemsize != info.file_size:
            raise ValueError(f"image.npy's header {shape} {dtype} does not match its {info.file_size} bytes")
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable preprocessed case ({err})") from None


def _read_image(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["image"]


def load_case(path: Path) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    with np.load(path, allow_pickle=False) as data:
        geometry = Geometry(tuple(data["spacing_mm"]), tuple(data["origin_mm"]), tuple(map(tuple, data["direction"])))
        label = data["label"] if "label" in data.files else None
        return data["image"], label, geometry


def preprocess_case(
    image_path: Path, label_path: Path | None, plans: Mapping, out: Path
) -> tuple[tuple[int, ...], Geometry]:
    """Preprocess a converted case (NIfTI) and store it for training, in the canonical orientation."""
    from carve.imaging.io import read_channels, read_image
    from carve.imaging.orientation import to_canonical

    image, own_geometry = read_channels(image_path)
    own_shape = image.shape[1:]
    image, geometry, turn = to_canonical(image, own_geometry)
    data, new_geometry = preprocess_image(image, geometry, plans)
    labels = None
    if label_path is not None:
        raw, _ = read_image(label_path)
        if raw.shape != own_shape:
            raise InputError(f"{label_path}: label shape {raw.shape} differs from the image's {own_shape}")
        labels = preprocess_labels(turn.to_canonical(raw), geometry, plans)
        if labels.shape != data.shape[1:]:
            raise RuntimeError(f"{label_path}: resampled label {labels.shape} != image {data.shape[1:]}")
    save_case(out, data, new_geometry, labels)
    return data.shape[1:], new_geometry
