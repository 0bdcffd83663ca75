"""Convert a case's image and label (DICOM series folder or image file) to checked NIfTI.

Every refusal is a :class:`ConversionError` whose one-line message names the case, the file and the reason;
nothing is written unless the whole conversion succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carve.errors import CarveError
from carve.imaging.io import (
    Geometry,
    ImageReadError,
    check_nifti_data,
    is_image_file,
    read_channels,
    read_image,
    write_channels,
    write_image,
)

log = logging.getLogger("carve.imaging.convert")


class ConversionError(CarveError, ValueError):
    """An input that carve refuses to convert."""


@dataclass(frozen=True)
class DicomOptions:
    series_uid: str | None = None
    series_description: str | None = None
    tilt: str = "resample"  # or "refuse"
    uneven_spacing: str = "refuse"  # or "resample" onto the median slice increment
    min_slices: int = 3


@dataclass(frozen=True)
class ChannelSpec:
    """One input channel: its name and which series of a DICOM study folder it is (None: the config's)."""

    name: str = "image"
    series_uid: str | None = None
    series_description: str | None = None

    def dicom_options(self, base: DicomOptions, choice: str | None = None) -> DicomOptions:
        """The reader options of this channel: the sheet's choice, else the channel's, else the config's."""
        from dataclasses import replace

        from carve.pipeline.sheet import series_choice

        uid, pattern = series_choice(choice)
        if uid is None and pattern is None:
            uid, pattern = self.series_uid, self.series_description
        if uid is None and pattern is None:
            return base
        return replace(base, series_uid=uid, series_description=pattern)


@dataclass(frozen=True)
class LabelOptions:
    tolerance_mm: float = 1e-3  # geometry differences below this are taken as the same grid
    resample_tolerance_mm: float = 2.0  # differences up to this are resampled (nearest), beyond refused
    float_tolerance: float = 1e-3  # float labels within this of an integer are rounded


def load_volume(case: str, source: Path, dicom: DicomOptions = DicomOptions()) -> tuple[np.ndarray, Geometry]:
    """Read a DICOM series folder or an image file as a 3D volume."""
    source = Path(source)
    try:
        if source.is_dir():
            from carve.imaging.dicom import DicomError, read_dicom_series

            try:
                return read_dicom_series(
                    source,
                    uid=dicom.series_uid,
                    description_pattern=dicom.series_description,
                    tilt=dicom.tilt,
                    uneven_spacing=dicom.uneven_spacing,
                    min_slices=dicom.min_slices,
                )
            except DicomError as err:
                raise ConversionError(f"case '{case}': {err}") from None
        if not source.exists():
            raise ConversionError(f"case '{case}': {source}: no such file or folder")
        if not is_image_file(source):
            raise ConversionError(
                f"case '{case}': {source}: not a DICOM folder or a NIfTI/NRRD/MHA file (unknown extension)"
            )
        check_nifti_data(source)  # ITK would read a cut file and fill the rest with zeros
        array, geometry = read_image(source)
        _refuse_nonfinite_nifti(case, source)
        return array, geometry
    except ImageReadError as err:
        raise ConversionError(f"case '{case}': {err}") from None


def _refuse_nonfinite_nifti(case: str, source: Path) -> None:
    """ITK reads NaN in NIfTI as 0 without a word; look at the raw values with nibabel first."""
    if not str(source).lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        image = nib.load(str(source))
        if not np.issubdtype(image.get_data_dtype(), np.floating):
            return
        bad = int((~np.isfinite(np.asanyarray(image.dataobj))).sum())
    except Exception as err:  # nibabel raises several kinds; ITK read the file, so it is damaged in a way ITK missed
        raise ConversionError(
            f"case '{case}': {source}: cannot be read as NIfTI ({' '.join(str(err).split())})"
        ) from None
    if bad:
        raise ConversionError(f"case '{case}': {source}: {bad} voxel(s) are NaN or infinite; fix or mask them")


def check_image(case: str, source: Path, array: np.ndarray) -> np.ndarray:
    """Refuse images carve cannot learn from; returns the array in a storable dtype."""
    if array.ndim != 3 or min(array.shape) < 1:
        raise ConversionError(f"case '{case}': {source}: expected a 3D volume, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise ConversionError(
                f"case '{case}': {source}: {int(bad.sum())} voxel(s) are NaN or infinite; fix or mask them"
            )
    if array.dtype == np.float64:
        big = np.abs(array) > np.finfo(np.float32).max
        if big.any():  # e.g. a DICOM rescale slope that sends stored values beyond what float32 holds
            raise ConversionError(
                f"case '{case}': {source}: {int(big.sum())} voxel(s) lie beyond the float32 range (up to "
                f"{np.abs(array).max():.3g}); check the rescale slope and intercept"
            )
        array = array.astype(np.float32)
    if np.ptp(array) == 0:
        log.warning("case '%s': %s: the image is constant (value %s)", case, source, array.flat[0])
    return array


def convert_image(
    case: str,
    sources: Path | Sequence[Path],
    out_path: Path,
    dicom: DicomOptions = DicomOptions(),
    channels: Sequence[ChannelSpec] = (ChannelSpec(),),
    series: Sequence[str | None] = (),
) -> Geometry:
    """Convert a case's image, one channel or several, to NIfTI (3D, or 4D with channels last).

    ``sources`` holds one source per channel, or one for all: a DICOM study folder (each channel picks its
    series) or a 4D file (one volume per channel). Every channel is put on the first channel's grid.
    """
    channels = list(channels) or [ChannelSpec()]
    sources = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(p) for p in sources]
    if len(sources) == 1:
        sources = sources * len(channels)
    if len(sources) != len(channels):
        raise ConversionError(f"case '{case}': {len(sources)} image sources for {len(channels)} channels")
    choices = list(series) or [None] * len(channels)
    volumes: list[tuple[np.ndarray, Geometry]] = []
    for k, (spec, source) in enumerate(zip(channels, sources, strict=True)):
        array, geometry = _load_channel(case, source, spec, k, len(channels), spec.dicom_options(dicom, choices[k]))
        array = check_image(case, source, array)
        if volumes:
            array = _onto_first_grid(case, source, spec.name, array, geometry, volumes[0])
        volumes.append((array, geometry))
        log.info(
            "case '%s': channel '%s' from %s, shape %s, spacing %s mm",
            case,
            spec.name,
            source.name,
            array.shape,
            _r(geometry.spacing_mm),
        )
    geometry = volumes[0][1]
    if len(volumes) == 1:
        write_image(out_path, volumes[0][0], geometry)
    else:
        dtype = np.result_type(*(v[0].dtype for v in volumes))
        write_channels(out_path, np.stack([v[0].astype(dtype) for v in volumes]), geometry)
    log.info("case '%s': image -> %s (%d channel(s))", case, out_path, len(volumes))
    return geometry


def _load_channel(
    case: str, source: Path, spec: ChannelSpec, index: int, n_channels: int, dicom: DicomOptions
) -> tuple[np.ndarray, Geometry]:
    """Channel ``index`` from a DICOM folder (its own series), a 3D file, or volume ``index`` of a 4D file."""
    if source.is_dir() or not is_image_file(source) or n_channels == 1:
        return load_volume(case, source, dicom)
    try:
        check_nifti_data(source)
        stack, geometry = read_channels(source)
    except ImageReadError as err:
        raise ConversionError(f"case '{case}': {err}") from None
    _refuse_nonfinite_nifti(case, source)
    if stack.shape[0] == 1:
        return stack[0], geometry
    if stack.shape[0] != n_channels:
        raise ConversionError(
            f"case '{case}': {source}: has {stack.shape[0]} volumes but the config names {n_channels} channels; "
            f"give one volume per channel (channel '{spec.name}' is number {index + 1})"
        )
    return stack[index], geometry


def _onto_first_grid(
    case: str, source: Path, name: str, array: np.ndarray, geometry: Geometry, first: tuple[np.ndarray, Geometry]
) -> np.ndarray:
    """Put a further channel on the first channel's grid (linear interpolation), or refuse if they do not meet."""
    shape, reference = first[0].shape, first[1]
    if array.shape == shape and geometry.is_close(reference, 1e-3, shape=shape):
        return array
    if not _overlaps(array.shape, geometry, shape, reference):
        raise ConversionError(
            f"case '{case}': {source}: channel '{name}' does not overlap the first channel in space (origin "
            f"{_r(geometry.origin_mm)} vs {_r(reference.origin_mm)} mm); are they from the same study?"
        )
    from carve.imaging.resample import resample_to_reference

    log.warning(
        "case '%s': channel '%s' (%s, spacing %s mm) resampled onto the first channel's grid (%s, %s mm), linear",
        case,
        name,
        array.shape,
        _r(geometry.spacing_mm),
        shape,
        _r(reference.spacing_mm),
    )
    return resample_to_reference(array.astype(np.float32), geometry, shape, reference, order=1)


def to_integer_labels(case: str, source: Path, labels: np.ndarray, float_tolerance: float) -> np.ndarray:
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise ConversionError(f"case '{case}': {source}: label contains NaN or infinite values")
        rounded = np.rint(labels)
        off = np.abs(labels - rounded).max() if labels.size else 0.0
        if off > float_tolerance:
            raise ConversionError(
                f"case '{case}': {source}: label has non-integer values (off by up to {off:.4g}); "
                "a label map must hold integer label values"
            )
        if off > 0:
            log.warning("case '%s': %s: float label values rounded to integers (max change %.3g)", case, source, off)
        labels = rounded
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ConversionError(
            f"case '{case}': {source}: label values must lie in 0..255, found {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.uint8)


def convert_label(
    case: str,
    source: Path,
    image_nifti: Path,
    out_path: Path,
    label_values: Mapping[int, str],
    options: LabelOptions = LabelOptions(),
    dicom: DicomOptions = DicomOptions(),
    to_values: Mapping[int, int] | None = None,
) -> dict[str, int]:
    """Convert a label onto its (already converted) image's grid; returns voxel counts per label name.

    ``to_values`` maps the file's label values to the run's (a dataset's labels into the union of several)."""
    channels, image_geometry = read_channels(image_nifti)
    image = channels[0]  # the grid of the first channel is the grid of all
    labels = _read_dicom_label_object(case, source, image.shape, image_geometry, label_values)
    if labels is not None:  # a DICOM-SEG or RTSTRUCT, already on the image grid
        geometry = image_geometry
    else:
        labels, geometry = load_volume(case, source, dicom)
        labels = to_integer_labels(case, source, labels, options.float_tolerance)
    same_shape = labels.shape == image.shape
    if same_shape and geometry.is_close(image_geometry, options.tolerance_mm, shape=image.shape):
        pass
    elif (
        same_shape
        and geometry.is_close(image_geometry, options.resample_tolerance_mm, shape=image.shape)
        or (
            not same_shape
            and _overlaps(labels.shape, geometry, image.shape, image_geometry)
            and _within(labels.shape, geometry, image.shape, image_geometry, options.resample_tolerance_mm)
        )
    ):
        from carve.imaging.resample import resample_to_reference

        log.warning(
            "case '%s': %s: label grid differs from the image grid (shape %s vs %s); resampled onto the image "
            "grid (nearest neighbour)",
            case,
            source,
            labels.shape,
            image.shape,
        )
        labels = resample_to_reference(labels, geometry, image.shape, image_geometry, order=0)
    else:
        raise ConversionError(
            f"case '{case}': {source}: label does not match its image {image_nifti.name}: shape {labels.shape} vs "
            f"{image.shape}, spacing {_r(geometry.spacing_mm)} vs {_r(image_geometry.spacing_mm)} mm, origin "
            f"{_r(geometry.origin_mm)} vs {_r(image_geometry.origin_mm)} mm, axes "
            f"{_angle(geometry, image_geometry):.2f} degrees apart: the grids differ by more than the "
            f"{options.resample_tolerance_mm} mm that carve resamples"
        )
    present = {int(v) for v in np.unique(labels)} - {0}
    unknown = sorted(present - set(int(k) for k in label_values))
    if unknown:
        raise ConversionError(
            f"case '{case}': {source}: label value(s) {unknown} are not in the config's labels "
            f"{dict(sorted(label_values.items()))}"
        )
    counts = {name: int((labels == value).sum()) for value, name in sorted(label_values.items())}
    if not present:
        log.warning("case '%s': %s: the label is empty (no foreground voxel)", case, source)
    if to_values is not None:
        from carve.imaging.labels import remap_labels

        labels = remap_labels(labels, to_values)
        log.info("case '%s': label values mapped to the run's labels %s", case, dict(sorted(to_values.items())))
    write_image(out_path, labels, image_geometry)
    log.info("case '%s': label %s -> %s, voxels per label %s", case, source.name, out_path, counts)
    return counts


def _read_dicom_label_object(
    case: str, source: Path, shape: tuple[int, ...], geometry: Geometry, label_values: Mapping[int, str]
) -> np.ndarray | None:
    """Labels from a DICOM-SEG or RTSTRUCT (file, or folder holding one), or None for other sources."""
    if is_image_file(source):
        return None
    from carve.imaging.dicom import DicomError
    from carve.imaging.dicom_labels import find_label_object, read_label_object

    try:
        found = find_label_object(source)
        if found is None:
            return None
        return read_label_object(found, shape, geometry, label_values)
    except DicomError as err:
        raise ConversionError(f"case '{case}': {err}") from None


def _angle(a: Geometry, b: Geometry) -> float:
    """The largest angle (degrees) between corresponding axes of two grids."""
    cosines = np.sum(a.direction_matrix * b.direction_matrix, axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())


def _r(values) -> tuple:
    return tuple(round(float(v), 3) for v in values)


def _extent(shape, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = geometry.index_to_world(corners)
    return world.min(axis=0), world.max(axis=0)


def _overlaps(shape_a, geom_a: Geometry, shape_b, geom_b: Geometry) -> bool:
    lo_a, hi_a = _extent(shape_a, geom_a)
    lo_b, hi_b = _extent(shape_b, geom_b)
    return bool(np.all(lo_a <= hi_b) and np.all(lo_b <= hi_a))


def _within(shape_a, geom_a: Geometry, shape_b, geom_b: Geometry, tolerance_mm: float) -> bool:
    """Both grids span the same physical box to within ``tolerance_mm`` (a re-gridded copy of one scan)."""
    lo_a, hi_a = _extent(shape_a, geom_a)
    lo_b, hi_b = _extent(shape_b, geom_b)
    pad_a = np.abs(geom_a.affine[:3, :3]).sum(axis=1) / 2
    pad_b = np.abs(geom_b.affine[:3, :3]).sum(axis=1) / 2
    return bool(
        np.abs((lo_a - pad_a) - (lo_b - pad_b)).max() <= tolerance_mm
        and np.abs((hi_a + pad_a) - (hi_b + pad_b)).max() <= tolerance_mm
    )
