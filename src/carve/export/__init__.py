"""Exports a user takes away: meshes for 3D printing and DICOM objects for the scanner's viewer.

- ``mesh``, ``mesh_build``, ``mesh_quality``, ``mesh_colour``: surface meshes per label, watertight, smoothed,
  coloured by uncertainty.
- ``dicom_export``, ``dicom_write``: predictions as DICOM-SEG and RTSTRUCT on the source series.
"""
