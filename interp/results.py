"""The one result contract every result type follows (as peft gives every tuner one shape):

- ``to_frame()``: a pandas DataFrame with one row per component (named ``L23H0``, ``L5MLP``; or
  per accuracy cell, per condition), a ``value`` column and ``ci_low`` / ``ci_high`` where an
  interval is known;
- ``save(dir)`` / ``cls.load(dir)``: a round trip through ``<stem>.safetensors`` (tensors) and
  ``<stem>.json`` (everything else), both written atomically, plus any views a type adds
  (``_save_extra`` / ``_load_extra``: the accuracy CSV and predictions of an evaluation);
- ``top(k)``: the ``k`` rows of ``to_frame()`` with the largest absolute ``value``.

A subclass implements ``to_frame``, ``_tensors``, ``_meta`` and ``_from``; ``stem`` (default
``file_stem``) names its files, and ``_stem_in(dir)`` finds them when ``load`` is not told.
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

    @property
    def stem(self) -> str:
        """The file stem this result saves under."""
        return self.file_stem

    @classmethod
    def _stem_in(cls, directory: Path) -> str:
        return cls.file_stem

    def _save_extra(self, out: Path) -> None:
        """Files beside ``<stem>.json`` (none by default)."""

    def _load_extra(self, directory: Path) -> None:
        """Read back what :meth:`_save_extra` wrote (nothing by default)."""

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        if tensors:
            save_tensors(out / f"{self.stem}.safetensors", tensors)
        write_json(out / f"{self.stem}.json", {"type": type(self).__name__, **self._meta()})
        self._save_extra(out)
        return out

    @classmethod
    def load(cls, directory: str | Path, stem: str | None = None):
        """The result saved in ``directory`` (under ``stem``, default: the type's own)."""
        directory = Path(directory)
        stem = stem or cls._stem_in(directory)
        meta = read_json(directory / f"{stem}.json")
        if meta is None:
            raise ConfigError(f"no readable {stem}.json in {directory}")
        if meta.pop("type", cls.__name__) != cls.__name__:
            raise ConfigError(f"{directory} holds a different result type")
        path = directory / f"{stem}.safetensors"
        tensors = load_tensors(path) if path.exists() else {}
        if tensors is None:
            raise ConfigError(f"{path} is unreadable")
        result = cls._from(tensors, meta)
        result._load_extra(directory)
        return result
