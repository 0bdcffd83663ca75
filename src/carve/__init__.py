"""carve: reproducible 3D segmentation from few labelled scans."""

__version__ = "0.1.0"
