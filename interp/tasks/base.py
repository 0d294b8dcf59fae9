"""Example schema, the task-family base class and registry, seeded generation with disjoint
splits, and JSONL io.

A family knows three things beyond how to draw an example (see :class:`TaskFamily`):

- its **shortcuts**: what each plausible implicit pattern answers for an example
  (``shortcuts(ex)``; the declared one is ``shortcut(ex)``). Every generated example records
  them in ``meta["shortcuts"]``;
- a **counterfactual edit** (``counterfactual``): a same-length edit of a pattern example that
  flips the answer, on which the shortcut and the full rule agree;
- a **separating edit** (``separating``): a same-length edit on which they disagree (the rule's
  answer changes and the shortcut's does not), so a score map on such pairs shows which
  strategy a model uses.

If you add a task family: one file in ``interp/tasks/`` with a :class:`TaskFamily` subclass
(``name``, ``header``, ``choices``, ``other_task`` for the shift experiment's other-task shams,
``draw``, ``shortcuts``, ``counterfactual``, ``separating``) registered with :func:`register`,
and its import in ``interp/tasks/__init__.py``; the task tests run every registered family.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from interp.errors import TaskError
from interp.files import write_text

SPLITS = ("train", "demo", "validation", "test")
# Every input text hashes to one split, so no input is ever shared between splits, whatever the
# seeds: buckets out of 20 -> train 50%, demo 20%, validation 10%, test 20%.
_SPLIT_BUCKETS = {"train": range(0, 10), "demo": range(10, 14), "validation": range(14, 16),
                  "test": range(16, 20)}


@dataclass
class Example:
    """One task item. ``meta`` holds enough structure for an independent checker to recompute
    ``target`` (the expression, the program source, the bits and subset, the edges) and, under
    ``meta["shortcuts"]``, what every plausible shortcut answers."""

    id: str
    task: str
    input: str
    target: str
    choices: list[str] | None
    pattern: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, row: dict) -> Example:
        if not isinstance(row, dict):
            raise TaskError("an example row must be a JSON object")
        missing = {"input", "target"} - set(row)
        if missing:
            raise TaskError(f"example row lacks {', '.join(sorted(missing))}")
        for key in ("input", "target"):
            if not isinstance(row[key], (str, int, float)) or isinstance(row[key], bool):
                raise TaskError(f"example field {key!r} must be a string, got "
                                f"{type(row[key]).__name__}")
        choices = row.get("choices")
        if choices is not None and (not isinstance(choices, list)
                                    or not all(isinstance(c, str) for c in choices)):
            raise TaskError("example field 'choices' must be a list of strings")
        return cls(id=str(row.get("id", "")), task=str(row.get("task", "custom")),
                   input=str(row["input"]), target=str(row["target"]),
                   choices=list(choices) if choices else None,
                   pattern=bool(row.get("pattern", True)), meta=dict(row.get("meta") or {}))


class Edit(NamedTuple):
    """An edited input and the full rule's answer for it."""

    input: str
    target: str


class TaskFamily:
    """A task family. Subclasses set the class attributes and implement :meth:`draw`,
    :meth:`shortcuts`, :meth:`counterfactual` and :meth:`separating`.

    ``draw(rng, pattern, label, **knobs)`` returns ``(input, target, meta)``; ``label`` is the
    wanted answer for closed answer sets (for balance) and None for open ones. ``answer_sep``
    joins input and target in demonstrations ("" after "=", " " after ":").
    """

    name: str = ""
    header: str = ""
    knobs: dict[str, Any] = {}
    answer_sep: str = " "
    choices: tuple[str, ...] | None = None
    max_new_tokens: int = 4
    description: str = ""
    primary_shortcut: str = "shortcut"
    #: the documented setting on which smollm2-135m shows a measurable 4-shot behaviour (a
    #: clean-corrupt gap whose interval lies above 0); chosen on seed-0 pairs, see the README
    measurable_knobs: dict = {}
    #: which items the separating edit applies to (True: pattern items, False: control items)
    separating_on_pattern: bool = True
    #: the family whose demonstrations and training data the other-task shams use: one with the
    #: same answer set where one exists (None: the family takes no part in shift experiments)
    other_task: str | None = None

    def draw(self, rng: random.Random, pattern: bool, label, **knobs) -> tuple[str, str, dict]:
        raise NotImplementedError

    def validate(self, knobs: dict) -> None:
        """Raise TaskError for knob values out of range."""

    def shortcuts(self, ex: Example) -> dict[str, str]:
        """What each plausible implicit pattern answers for ``ex`` (name -> answer)."""
        raise NotImplementedError

    def shortcut(self, ex: Example) -> str:
        """The declared shortcut's answer (what demonstrations and training data teach)."""
        return self.shortcuts(ex)[self.primary_shortcut]

    def counterfactual(self, ex: Example, rng: random.Random) -> Edit | None:
        """A same-length edit of a pattern example that flips both the rule's and the shortcut's
        answer; None when this example has none."""
        raise NotImplementedError

    def separating(self, ex: Example, rng: random.Random) -> Edit | None:
        """A same-length edit that changes the rule's answer but not the shortcut's; None when
        this example has none."""
        raise NotImplementedError

    def resolve_knobs(self, knobs: dict) -> dict:
        unknown = set(knobs) - set(self.knobs)
        if unknown:
            raise TaskError(f"task {self.name!r} has no knob {sorted(unknown)[0]!r}; "
                            f"knobs: {', '.join(sorted(self.knobs)) or 'none'}")
        merged = {**self.knobs, **{k: v for k, v in knobs.items() if v is not None}}
        # lists and tuples are one value: the same knob spelled either way gives the same data
        merged = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
        self.validate(merged)
        return merged

    def chance(self) -> float | None:
        """Accuracy of a uniform guess over a closed answer set (None for open answers)."""
        return 1.0 / len(self.choices) if self.choices else None


REGISTRY: dict[str, TaskFamily] = {}


def register(family: TaskFamily) -> TaskFamily:
    REGISTRY[family.name] = family
    return family


def get_task(name: str) -> TaskFamily:
    if name not in REGISTRY:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def split_of(text: str) -> str:
    bucket = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 20
    return next(s for s, r in _SPLIT_BUCKETS.items() if bucket in r)


def generate(task: str, n: int, seed: int = 0, split: str = "test", pattern: bool = True,
             **knobs) -> list[Example]:
    """Generate ``n`` examples of ``task``; same arguments give identical examples."""
    family = get_task(task)
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise TaskError(f"n must be a non-negative integer, got {n!r}")
    params = family.resolve_knobs(knobs)
    rng = random.Random(f"{task}|{seed}|{split}|{int(pattern)}|{sorted(params.items())}")
    labels = _balanced_labels(family.choices, n, rng)
    out: list[Example] = []
    seen: set[str] = set()
    budget = 400 * max(n, 1) + 10_000
    for i in range(n):
        for _ in range(budget):
            text, target, meta = family.draw(rng, pattern, labels[i], **params)
            if split_of(text) == split and text not in seen:
                break
        else:
            raise TaskError(f"task {task!r} could not generate enough {split} examples with "
                            f"these knobs; widen their ranges or ask for fewer")
        seen.add(text)
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        ex = Example(id=f"{task}-{split}-{'p' if pattern else 'c'}-{i:05d}-{digest}", task=task,
                     input=text, target=target,
                     choices=list(family.choices) if family.choices else None,
                     pattern=pattern, meta=meta)
        ex.meta["shortcuts"] = family.shortcuts(ex)
        out.append(ex)
    return out


#: the edits a pair is built from: the counterfactual (shortcut and rule agree) and the
#: separating one (the rule's answer changes, the shortcut's does not)
PAIR_KINDS = ("counterfactual", "separating")


def pair_sources(task: str, n: int, seed: int = 0, split: str = "test",
                 kind: str = "counterfactual", **knobs) -> list[tuple[Example, str, str]]:
    """Up to ``n`` (example, corrupt input, corrupt answer) triples of one edit kind, drawn
    from a pool 4n + 8 examples deep (the condition each edit applies to)."""
    if kind not in PAIR_KINDS:
        raise TaskError(f"pair kind must be one of {', '.join(PAIR_KINDS)}, got {kind!r}")
    family = get_task(task)
    edit = family.counterfactual if kind == "counterfactual" else family.separating
    pattern = True if kind == "counterfactual" else family.separating_on_pattern
    rng = random.Random(f"pairs|{task}|{kind}|{seed}")
    out = []
    for ex in generate(task, 4 * n + 8, seed=seed, split=split, pattern=pattern, **knobs):
        changed = edit(ex, rng)
        if changed is not None and changed.target != ex.target:
            out.append((ex, changed.input, changed.target))
    return out


def _balanced_labels(choices, n: int, rng: random.Random) -> list[str | None]:
    if not choices:
        return [None] * n
    labels = [choices[i % len(choices)] for i in range(n)]
    rng.shuffle(labels)
    return labels


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    return write_text(path, "".join(ex.to_json() + "\n" for ex in examples))


def read_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no such file: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(Example.from_dict(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{lineno}: not JSON") from exc
        except TaskError as exc:
            raise TaskError(f"{path}:{lineno}: {exc}") from exc
    return rows
