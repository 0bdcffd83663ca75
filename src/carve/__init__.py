"""carve: reproducible 3D segmentation from few labelled scans.

Sub-packages by stage (docs/architecture.md): ``carve.imaging`` (I/O, orientation, DICOM, conversion),
``carve.planning`` (plans, topology, splits, preprocessing), ``carve.training`` (network, training),
``carve.prediction`` (ensemble, uncertainty, postprocessing, bundles), ``carve.evaluation`` (metrics, report),
``carve.export`` (meshes, DICOM-SEG/RTSTRUCT), ``carve.pipeline`` (run configuration, step glue, provenance, the
``carve`` command); ``carve.errors`` holds the one user-facing error type.
"""

__version__ = "0.1.0"
