"""interp: why in-context learning beats fine-tuning, measured on real models.

The public API (``dir(interp)`` lists it). Names are loaded on first use, so ``import interp``
and the ``interp`` command stay fast; each lives in the module named beside it below.
"""

from interp.errors import ConfigError, InterpError, StaleResultsError, TaskError, UnsupportedError
from interp.lazy import lazy_exports
from interp.version import __version__

_EXPORTS = {
    # models and tasks
    "load_model": "interp.models", "LoadedModel": "interp.models",
    "generate": "interp.tasks", "get_task": "interp.tasks", "TASKS": "interp.tasks",
    "choose_demos": "interp.prompts", "build_prompt": "interp.prompts",
    # evaluation
    "evaluate": "interp.evaluate", "EvalResult": "interp.evaluate",
    # patching and attribution
    "task_pairs": "interp.analysis", "tokenize_pairs": "interp.analysis",
    "patch_pairs": "interp.analysis", "attribution_patch": "interp.analysis",
    "activation_patch": "interp.analysis", "direct_logit_attribution": "interp.analysis",
    "PatchResult": "interp.analysis", "find_icl_heads": "interp.analysis",
    "cross_model_patch": "interp.analysis", "edge_attribution": "interp.analysis",
    # circuits
    "ScoreMap": "interp.circuits", "distances": "interp.circuits",
    "disattenuated": "interp.circuits",
    # fine-tuning
    "train": "interp.finetune", "train_gd": "interp.finetune", "TrainConfig": "interp.finetune",
    # experiments
    "run_shift": "interp.shift", "ShiftConfig": "interp.shift", "ShiftResult": "interp.shift",
    "run_study": "interp.study", "StudyConfig": "interp.study",
    "run_alignment": "interp.align",
    # plots and reports
    "heatmap": "interp.plots", "show_views": "interp.report",
}

__all__ = ["__version__", "InterpError", "ConfigError", "TaskError", "UnsupportedError",
           "StaleResultsError", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
