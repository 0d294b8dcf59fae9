"""Experiment tracking through accelerate's trackers (``--report-to``), offline by default.

``tensorboard`` writes event files under ``<out>/tracking/``; ``wandb`` runs in offline mode
unless ``WANDB_MODE`` says otherwise; ``mlflow`` logs to ``<out>/tracking/mlruns`` unless
``MLFLOW_TRACKING_URI`` is set; ``trackio`` keeps its local store. Only the main process logs.
"""

from __future__ import annotations

import os
from pathlib import Path

from interp.errors import ConfigError, MissingDependencyError
from interp.files import finite

REPORT_TO = ("none", "tensorboard", "wandb", "trackio", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio",
             "mlflow": "mlflow"}


class Tracker:
    """One run in one tracker: ``log(values, step)``, ``finish()``."""

    def __init__(self, backend):
        self.backend = backend

    def log(self, values: dict, step: int | None = None) -> None:
        clean = {k: v for k, v in finite(values).items() if isinstance(v, (int, float))}
        if clean:
            self.backend.log(clean, step=step)

    def finish(self) -> None:
        self.backend.finish()


def _scalar_config(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        else:
            out[key] = str(value)
    return out


def start(report_to: str | None, out: str | Path, run_name: str,
          config: dict | None = None) -> Tracker | None:
    """A tracker for ``report_to`` (None or "none": no tracking)."""
    if not report_to or report_to == "none":
        return None
    if report_to not in REPORT_TO:
        raise ConfigError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    import importlib.util

    if importlib.util.find_spec(_PACKAGES[report_to]) is None:
        raise MissingDependencyError(f"--report-to {report_to} needs the package "
                                     f"{_PACKAGES[report_to]}: pip install {_PACKAGES[report_to]}")
    from accelerate import tracking

    logdir = Path(out) / "tracking"
    logdir.mkdir(parents=True, exist_ok=True)
    if report_to == "tensorboard":
        backend = tracking.TensorBoardTracker(run_name, logdir)
    elif report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(logdir))
        backend = tracking.WandBTracker(run_name)
    elif report_to == "mlflow":
        os.environ.setdefault("MLFLOW_TRACKING_URI", (logdir / "mlruns").resolve().as_uri())
        backend = tracking.MLflowTracker(run_name, logging_dir=str(logdir))
    else:
        backend = tracking.TrackioTracker(run_name)
    backend.start()
    if config:
        backend.store_init_configuration(_scalar_config(config))
    return Tracker(backend)
