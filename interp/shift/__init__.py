"""The circuit-shift experiment: does ICL re-route the computation more than fine-tuning does,
beyond what matched shams do? See :mod:`interp.shift.run` for the stages,
:mod:`interp.shift.compare` for the statistics and :mod:`interp.shift.verdict` for the rules."""

from interp.shift.compare import compare_scores
from interp.shift.config import CONDITIONS, OTHER_TASK, SHAMS, ShiftConfig
from interp.shift.results import ShiftResult
from interp.shift.run import run_shift

__all__ = ["CONDITIONS", "OTHER_TASK", "SHAMS", "ShiftConfig", "ShiftResult", "compare_scores",
           "run_shift"]
