"""Every real NIfTI (and NRRD) file of the shared data is still read by carve after the NIfTI placement checks.

carve refuses a NIfTI whose sform is sheared or that ITK places elsewhere than its header does (carve.imaging.io); real
scanner headers carry float32 noise (axes orthonormal to about 1e-4), which the tolerances must let through. Each
file is read through carve.imaging.io.read_channels (3D and 4D) and, when it holds one volume, read_image, and the
geometry
carve gets is compared with the header's (nibabel's affine, RAS turned to LPS) at the corner voxels.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from carve.imaging.io import Geometry, ImageReadError, read_channels, read_image

pytestmark = pytest.mark.realdata

# folder under the shared data, glob, at least this many files (the shared data's README gives the counts)
SETS = [
    ("hippocampus10/imagesTr", "*.nii.gz", 10),
    ("hippocampus10/labelsTr", "*.nii.gz", 10),
    ("hippocampus-unlabelled/imagesTr", "*.nii.gz", 60),
    ("ct/totalsegmentator_example", "*.nii.gz", 8),
    ("dicom/dicom2nifti", "**/*_ground_truth.nii.gz", 25),
    ("mr/pyradiomics", "*.nrrd", 8),  # NRRD: not NIfTI, read as before
]
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _files(shared_data: Path) -> list[Path]:
    files = []
    for folder, pattern, at_least in SETS:
        found = sorted((shared_data / folder).glob(pattern))
        assert len(found) >= at_least, f"{folder}: {len(found)} files match {pattern}, expected {at_least} or more"
        files += found
    return files


def _corner_offset_mm(path: Path, shape: tuple[int, ...], geometry: Geometry) -> float:
    """Largest distance between where carve and the NIfTI header (nibabel) put the corner voxels."""
    affine = LPS @ nib.load(str(path)).affine
    n = shape[::-1]  # carve's (z, y, x) is NIfTI's (k, j, i)
    ijk = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)], float)
    header = ijk @ affine[:3, :3].T + affine[:3, 3]
    return float(np.linalg.norm(geometry.index_to_world(ijk[:, ::-1]) - header, axis=1).max())


def test_every_real_image_is_still_read_where_its_header_puts_it(shared_data: Path) -> None:
    files = _files(shared_data)
    read, failures = [], []
    for path in files:
        name = path.relative_to(shared_data).as_posix()
        nifti = path.name.endswith(".nii.gz")
        if nifti and nib.load(str(path)).get_data_dtype().names:  # RGB(A) voxels: refused for that, as before
            with pytest.raises(ImageReadError, match="components per voxel"):
                read_channels(path)
            continue
        try:
            channels, geometry = read_channels(path)
            if channels.shape[0] == 1:
                array, single = read_image(path)
                assert array.shape == channels.shape[1:] and single == geometry
        except ImageReadError as err:
            failures.append(f"{name}: {err}")
            continue
        if nifti:
            off = _corner_offset_mm(path, channels.shape[1:], geometry)
            if off > 1e-3:
                failures.append(f"{name}: carve's corners lie {off:.3g} mm from the header's")
        read.append(name)
    assert not failures, "\n".join(failures)
    rgb = [p for p in files if "rgb" in p.parts]
    assert len(read) == len(files) - len(rgb) and len(read) >= 115, len(read)
