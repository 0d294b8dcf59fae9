"""The circuit-shift experiment: does ICL re-route the computation more than fine-tuning does,
beyond what matched shams do? See :mod:`interp.shift.run` for the stages,
:mod:`interp.shift.contrasts` for the statistics and :mod:`interp.shift.verdict` for the rules.

Names load on first use, so reading the configuration (``interp shift --help``) stays fast."""

from interp.lazy import lazy_exports

_EXPORTS = {
    "compare_scores": "interp.shift.contrasts",
    "CONDITIONS": "interp.shift.config", "OTHER_TASK": "interp.shift.config",
    "SHAMS": "interp.shift.config", "ShiftConfig": "interp.shift.config",
    "study_template": "interp.shift.config",
    "preflight": "interp.shift.gaps", "run_shift": "interp.shift.run",
    "ConditionKey": "interp.shift.schema", "Interval": "interp.shift.schema",
    "ShiftResult": "interp.shift.schema",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
