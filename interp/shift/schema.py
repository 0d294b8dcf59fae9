"""Typed views of a shift run's results: what ``results.json`` holds, as attributes.

- :class:`Interval`: an estimate with its 95 % interval, standard error and, when undefined,
  the reason;
- :class:`ConditionKey`: a condition replicate (``"base-icl/0"``) or dose point
  (``"ft-zs/0@4"``) as ``(name, seed, dose)`` instead of a string to re-parse;
- :class:`ConditionRecord`, :class:`Verdict`;
- :class:`ShiftResult`: what :func:`interp.shift.run_shift` returns and
  ``ShiftResult.load(run_dir)`` reads back. ``result.conditions["base-icl"].gap.estimate``,
  ``result.verdict.code``; it is also a read-only mapping over ``results.json``'s keys
  (``result["verdict_code"]``), so scripts written against the JSON keep working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from interp.circuits import ScoreMap
from interp.errors import ConfigError
from interp.files import read_json
from interp.results import Result


@dataclass(frozen=True)
class Interval:
    """An estimate, its 95 % interval and standard error (None where undefined: ``reason``)."""
    estimate: float | None
    ci95: tuple[float | None, float | None] | None = None
    se: float | None = None
    reason: str | None = None

    @classmethod
    def of(cls, value: Mapping | None) -> Interval:
        value = value or {}
        ci = value.get("ci95")
        return cls(value.get("estimate"), tuple(ci) if ci is not None else None,
                   value.get("se"), value.get("reason"))

    @property
    def excludes_zero(self) -> bool:
        ci = self.ci95
        return ci is not None and None not in ci and (ci[0] > 0 or ci[1] < 0)


@dataclass(frozen=True, order=True)
class ConditionKey:
    """A condition's replicate: its name, the demonstration or fine-tuning seed and, for dose
    points of a fine-tuning run, the optimiser step (``ft-zs/0@4``)."""
    name: str
    seed: int = 0
    dose: int | None = None

    @classmethod
    def parse(cls, text: str) -> ConditionKey:
        body, _, dose = text.partition("@")
        name, _, seed = body.partition("/")
        try:
            return cls(name, int(seed) if seed else 0, int(dose) if dose else None)
        except ValueError:
            raise ConfigError(f"not a condition key: {text!r} (name/seed or name/seed@step)"
                              ) from None

    def __str__(self) -> str:
        return f"{self.name}/{self.seed}" + (f"@{self.dose}" if self.dose is not None else "")


@dataclass(frozen=True)
class ConditionRecord:
    """One condition of a run: accuracy on pattern and control queries, the clean-corrupt gap,
    the map's reliability and noise floor, whether it passed the gates, and what its
    construction kept (prompt length, label agreement, update norm)."""
    name: str
    pattern_accuracy: Interval
    control_accuracy: Interval
    gap: Interval
    reliability: Interval
    noise_floor: Interval
    gate_passed: bool
    gate_reason: str | None
    replicates: int
    mean_prompt_tokens: float | None
    label_agreement: float | None
    length_ratio: float | None
    delta_w_norm: float | None

    @classmethod
    def of(cls, name: str, value: Mapping) -> ConditionRecord:
        acc, gate = value.get("accuracy") or {}, value.get("gate") or {}
        return cls(name, Interval.of(acc.get("pattern")), Interval.of(acc.get("control")),
                   Interval.of(value.get("gap")), Interval.of(value.get("reliability")),
                   Interval.of(value.get("noise_floor")), bool(gate.get("passed")),
                   gate.get("reason"), int(value.get("replicates") or 1),
                   value.get("mean_prompt_tokens"), value.get("label_agreement"),
                   value.get("length_ratio"), value.get("delta_w_norm"))


@dataclass(frozen=True)
class Verdict:
    """The verdict on "ICL shifts the circuit more than fine-tuning": its code, the rule that
    fired, the sentence and the primary contrast."""
    code: str
    rule: str | None
    text: str
    effect: Interval


class ShiftResult(Result, Mapping):
    """A shift run's results (see the module docstring). ``to_frame()`` has one row per
    (condition, component) with the condition's map score as ``value``."""

    file_stem = "shift_result"

    def __init__(self, results: Mapping):
        self.results = dict(results.results if isinstance(results, ShiftResult) else results)

    # the mapping over results.json's keys
    def __getitem__(self, key: str):
        return self.results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @cached_property
    def conditions(self) -> dict[str, ConditionRecord]:
        return {name: ConditionRecord.of(name, v)
                for name, v in (self.results.get("conditions") or {}).items()}

    @cached_property
    def shift(self) -> dict[str, Interval]:
        """Each condition's shift from base-zs (disattenuated map distance)."""
        return {name: Interval.of(v) for name, v in (self.results.get("shift") or {}).items()}

    @cached_property
    def effects(self) -> dict[str, Interval]:
        return {name: Interval.of(v) for name, v in (self.results.get("effects") or {}).items()}

    @cached_property
    def verdict(self) -> Verdict:
        r = self.results
        return Verdict(r.get("verdict_code", ""), r.get("verdict_rule"), r.get("verdict", ""),
                       Interval.of((r.get("effects") or {}).get("icl_minus_ft")))

    @cached_property
    def maps(self) -> dict[str, ScoreMap]:
        return {c: ScoreMap(torch.tensor(m["heads"]), torch.tensor(m["mlp"]))
                for c, m in (self.results.get("maps") or {}).items()}

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for cond, smap in self.maps.items():
            frame = smap.to_frame()
            frame.insert(0, "condition", cond)
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)

    def conditions_frame(self) -> pd.DataFrame:
        """One row per condition: accuracies, gap, reliability, gate, shift, noise floor."""
        rows = []
        for name, c in self.conditions.items():
            shift = self.shift.get(name, Interval(None))
            rows.append({"condition": name,
                         "pattern_accuracy": c.pattern_accuracy.estimate,
                         "control_accuracy": c.control_accuracy.estimate,
                         "gap": c.gap.estimate, "gap_ci": _ci(c.gap),
                         "reliability": c.reliability.estimate,
                         "reliability_ci": _ci(c.reliability),
                         "gate": c.gate_passed, "shift": shift.estimate,
                         "shift_ci": _ci(shift), "noise_floor": c.noise_floor.estimate,
                         "mean_prompt_tokens": c.mean_prompt_tokens})
        return pd.DataFrame(rows)

    def _meta(self):
        return {"results": self.results}

    @classmethod
    def _from(cls, tensors, meta):
        return cls(meta["results"])

    @classmethod
    def load(cls, directory: str | Path) -> ShiftResult:
        """The run in ``directory``: the ``results.json`` that ``interp shift --out`` wrote, or a
        result saved with :meth:`save`."""
        directory = Path(directory)
        if (directory / "results.json").exists():
            data = read_json(directory / "results.json")
            if data is None:
                raise ConfigError(f"{directory}/results.json is unreadable")
            return cls(data)
        return super().load(directory)

    from_dir = load


def _ci(interval: Interval) -> list[float] | None:
    return list(interval.ci95) if interval.ci95 is not None else None
