"""Prediction: the fold ensemble on new scans, with uncertainty.

- ``inference``: Gaussian sliding-window ensemble on the plan grid (members: folds, mirrorings, projections).
- ``predict``: one case, predicted in the canonical orientation, written back on its own grid.
- ``uncertainty``, ``projection``: voxel maps and case scores; SPU-Net radial re-projections.
- ``postprocess``: largest component / hole filling, decided on cross-validation.
- ``bundle``: a trained model folder that segments new scans on its own.
"""
