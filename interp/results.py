"""The one result contract every result type follows (as peft gives every tuner one shape):

- ``to_frame()``: a pandas DataFrame with one row per component (named ``L23H0``, ``L5MLP``; or
  per accuracy cell, per condition), a ``value`` column and ``ci_low`` / ``ci_high`` where an
  interval is known;
- ``save(dir)`` / ``cls.load(dir)``: a round trip through ``<name>.safetensors`` (tensors) and
  ``<name>.json`` (everything else), both written atomically;
- ``top(k)``: the ``k`` rows of ``to_frame()`` with the largest absolute ``value``.

A subclass implements ``to_frame``, ``_tensors``, ``_meta`` and ``_from``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from interp.errors import ConfigError
from interp.files import load_tensors, read_json, save_tensors, write_json


class Result:
    #: file stem under which ``save`` writes this result
    file_stem: ClassVar[str] = "result"

    def to_frame(self):
        raise NotImplementedError

    def top(self, k: int = 10):
        """The ``k`` rows with the largest absolute value, largest first."""
        frame = self.to_frame()
        order = frame["value"].abs().sort_values(ascending=False, kind="stable").index
        return frame.loc[order[:k]].reset_index(drop=True)

    def _tensors(self) -> dict:
        return {}

    def _meta(self) -> dict:
        return {}

    @classmethod
    def _from(cls, tensors: dict, meta: dict):
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        if tensors:
            save_tensors(out / f"{self.file_stem}.safetensors", tensors)
        write_json(out / f"{self.file_stem}.json", {"type": type(self).__name__, **self._meta()})
        return out

    @classmethod
    def load(cls, directory: str | Path):
        directory = Path(directory)
        meta = read_json(directory / f"{cls.file_stem}.json")
        if meta is None:
            raise ConfigError(f"no readable {cls.file_stem}.json in {directory}")
        if meta.pop("type", cls.__name__) != cls.__name__:
            raise ConfigError(f"{directory} holds a different result type")
        path = directory / f"{cls.file_stem}.safetensors"
        tensors = load_tensors(path) if path.exists() else {}
        if tensors is None:
            raise ConfigError(f"{path} is unreadable")
        return cls._from(tensors, meta)
