"""Images in and out: I/O and the one orientation convention, resampling, DICOM, conversion, label bookkeeping.

- ``io``: read and write NIfTI/NRRD/MHA atomically; :class:`~carve.imaging.io.Geometry` (spacing, LPS direction,
  origin per array axis); refuses headers ITK would misplace.
- ``orientation``: the canonical orientation the models see (permutation and flips, no resampling).
- ``resample``: resampling of images and labels to a spacing.
- ``dicom``: DICOM series: finding, choosing, reading, geometry checks (tilt, uneven slices).
- ``dicom_labels``: DICOM-SEG and RTSTRUCT objects as label volumes.
- ``convert``: a case's image (and label) to NIfTI on the case's own grid.
- ``labels``: label values and names across several datasets (torch-free).
"""
