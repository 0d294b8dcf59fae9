"""Resumable stages: each writes its files atomically with the settings it depends on, and a
rerun reuses it only when those settings are the same (else it recomputes with ``force``, or
stops with one line naming what differs). An unreadable stage file counts as unfinished."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from interp.files import check_settings, load_tensors, read_json, save_tensors, write_json


def _record(path: Path) -> dict | None:
    """A stage's record, or None when it is missing, unreadable or not a stage record (a file
    left by another version): then the stage is unfinished."""
    record = read_json(path)
    return record if isinstance(record, dict) and "settings" in record else None


class Stages:
    """The run's resumable stages. ``inputs`` (what the conditions were built from: their
    demonstrations' ids) joins every stage's settings, so a stage computed on other
    demonstrations is stale even when the configuration is the same."""

    def __init__(self, out: Path, force: bool = False, inputs: dict | None = None):
        self.out, self.force = Path(out), force
        self.inputs = dict(inputs or {})
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []

    def json(self, name: str, settings: dict, compute: Callable[[], dict]) -> dict:
        """A JSON stage ``<name>.json`` holding ``{"settings", "data"}``."""
        settings = {**settings, **self.inputs}
        path = self.out / f"{name}.json"
        record = _record(path)
        if check_settings(path, record and record.get("settings"), settings, self.force) \
                and "data" in record:
            self._reuse(name, record)
            return record["data"]
        began = time.perf_counter()
        data = compute()
        seconds = round(time.perf_counter() - began, 2)
        write_json(path, {"settings": settings, "seconds": seconds, "data": data})
        self.timings[name] = seconds
        return data

    def _reuse(self, name: str, record: dict) -> None:
        """A reused stage reports the time it took when it was computed."""
        self.reused.append(name)
        if record.get("seconds") is not None:
            self.timings[name] = record["seconds"]

    def tensors(self, name: str, settings: dict, compute: Callable[[], dict]) -> dict:
        """A tensor stage ``<name>.safetensors`` with its settings in ``<name>.json``; the
        settings file is written last, so a crash in between leaves the stage unfinished."""
        settings = {**settings, **self.inputs}
        path, meta = self.out / f"{name}.safetensors", self.out / f"{name}.json"
        record = _record(meta)
        if check_settings(meta, record and record.get("settings"), settings, self.force):
            tensors = load_tensors(path)
            if tensors is not None and set(tensors) == set(record.get("keys", [])):
                self._reuse(name, record)
                return tensors
        began = time.perf_counter()
        tensors = compute()
        seconds = round(time.perf_counter() - began, 2)
        meta.unlink(missing_ok=True)
        save_tensors(path, tensors)
        write_json(meta, {"settings": settings, "seconds": seconds, "keys": sorted(tensors)})
        self.timings[name] = seconds
        return tensors

    def time(self, name: str, began: float) -> None:
        self.timings[name] = round(time.perf_counter() - began, 2)
