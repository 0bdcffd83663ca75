"""Evaluation and report.

- ``metrics``: overlap and surface metrics with ``spacing_mm``.
- ``evaluate``: a case's metrics table; ``calibration``: how good the uncertainty is.
- ``compare``, ``report``, ``preview``: comparison tables, report figures, case previews.
- ``learning_curve``: Dice against the number of training cases.
"""
