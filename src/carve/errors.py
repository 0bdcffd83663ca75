"""The one error type for problems a user must fix: bad input, bad configuration, a place that cannot be written.

:class:`CarveError` is what the step adapters (:func:`carve.pipeline.workflow.run_step`) and the ``carve`` command
show as one
clear line, without a traceback. Every other exception is a bug, or a failure carve did not foresee: it keeps its
traceback in the job's log. The named errors of the stages (:class:`carve.imaging.io.ImageReadError`,
:class:`carve.imaging.convert.ConversionError`, :class:`carve.pipeline.sheet.SheetError`,
:class:`carve.planning.plan.PlanError`, ...) are
subclasses; :class:`InputError` is for the rest. They are also ``ValueError`` (a bad value) or, for
:class:`WriteError`, ``OSError`` (with its ``errno``), so callers that catch those keep working.
"""

from __future__ import annotations


class CarveError(Exception):
    """A problem with the user's input, configuration or environment, explained in its message."""


class InputError(CarveError, ValueError):
    """Bad input or configuration that no named stage error covers."""


class WriteError(CarveError, OSError):
    """An output that cannot be written (a file where a folder must be, a full disk, no permission)."""
