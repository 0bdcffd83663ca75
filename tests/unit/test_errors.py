"""One error type for what a user must fix (carve.errors); everything else keeps its traceback."""

from __future__ import annotations

import errno
import logging

import pytest

from carve.errors import CarveError, InputError, WriteError
from carve.evaluation.evaluate import EvaluationError
from carve.imaging.convert import ConversionError
from carve.imaging.dicom import DicomError
from carve.imaging.io import ImageReadError, atomic_write_text
from carve.pipeline.sheet import SheetError
from carve.pipeline.workflow import run_step
from carve.planning.plan import PlanError
from carve.prediction.bundle import BundleError


@pytest.fixture
def restore_logging():
    """run_step configures logging for a whole job process; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    "kind",
    [BundleError, ConversionError, DicomError, EvaluationError, ImageReadError, PlanError, SheetError, InputError],
)
def test_every_stage_error_is_a_carve_error_and_a_value_error(kind) -> None:
    assert issubclass(kind, CarveError) and issubclass(kind, ValueError)


def test_a_user_error_is_one_line_without_traceback(tmp_path, restore_logging) -> None:
    def bad_input() -> None:
        raise InputError("case 'c1': the label has values [7] that the config does not name")

    log = tmp_path / "step.log"
    with pytest.raises(SystemExit) as exit_:
        run_step(log, bad_input)
    assert str(exit_.value) == "carve error: case 'c1': the label has values [7] that the config does not name"
    assert "Traceback" not in log.read_text()


def test_a_bug_keeps_its_traceback_in_the_log(tmp_path, restore_logging) -> None:
    def buggy() -> None:
        raise ValueError("operands could not be broadcast together")  # a plain ValueError is not a user error

    log = tmp_path / "step.log"
    with pytest.raises(ValueError, match="broadcast"):
        run_step(log, buggy)
    text = log.read_text()
    assert "unexpected failure in buggy" in text and "Traceback" in text and "def buggy" not in text
    assert 'raise ValueError("operands could not be broadcast together")' in text


def test_an_unwritable_output_is_a_write_error_with_its_errno(tmp_path) -> None:
    (tmp_path / "results").write_text("in the way")
    with pytest.raises(WriteError) as err:
        atomic_write_text(tmp_path / "results" / "x.txt", "data")
    assert isinstance(err.value, OSError) and err.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert "is a file, not a folder" in str(err.value)
