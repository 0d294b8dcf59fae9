"""The circuit-shift experiment: does ICL re-route the computation more than fine-tuning does,
beyond what matched shams do? See :mod:`interp.shift.run` for the stages,
:mod:`interp.shift.compare` for the statistics and :mod:`interp.shift.verdict` for the rules."""

from interp.shift.compare import compare_scores
from interp.shift.config import CONDITIONS, OTHER_TASK, SHAMS, ShiftConfig
from interp.shift.gaps import preflight
from interp.shift.run import run_shift
from interp.shift.schema import ConditionKey, Interval, ShiftResult

__all__ = ["CONDITIONS", "OTHER_TASK", "SHAMS", "ConditionKey", "Interval", "ShiftConfig",
           "ShiftResult", "compare_scores", "preflight", "run_shift"]
