"""Example schema, task registry, seeded generation with disjoint splits, and JSONL io."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from interp.errors import TaskError

SPLITS = ("train", "demo", "validation", "test")
# Every input text hashes to one split, so no input is ever shared between splits, whatever the
# seeds: buckets out of 20 -> train 50%, demo 20%, validation 10%, test 20%.
_SPLIT_BUCKETS = {"train": range(0, 10), "demo": range(10, 14), "validation": range(14, 16),
                  "test": range(16, 20)}


@dataclass
class Example:
    """One task item. ``meta`` holds enough structure for an independent checker to recompute
    ``target`` (the expression, the program source, the bits and subset, the edges)."""

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
    def from_dict(cls, row: dict) -> "Example":
        missing = {"input", "target"} - set(row)
        if missing:
            raise TaskError(f"example row lacks {', '.join(sorted(missing))}")
        return cls(id=str(row.get("id", "")), task=str(row.get("task", "custom")),
                   input=str(row["input"]), target=str(row["target"]),
                   choices=list(row["choices"]) if row.get("choices") else None,
                   pattern=bool(row.get("pattern", True)), meta=dict(row.get("meta", {})))


Draw = Callable[..., tuple[str, str, dict]]


@dataclass(frozen=True)
class TaskFamily:
    """A registered task family.

    ``draw(rng, pattern, label, **knobs)`` returns ``(input, target, meta)``; ``label`` is the
    wanted answer for closed answer sets (for balance) and None for open ones. ``answer_sep`` joins
    input and target in demonstrations ("" after "=", " " after ":").
    """

    name: str
    draw: Draw
    header: str
    knobs: dict[str, Any]
    answer_sep: str = " "
    choices: tuple[str, ...] | None = None
    max_new_tokens: int = 4
    validate: Callable[[dict], None] | None = None
    description: str = ""

    def resolve_knobs(self, knobs: dict) -> dict:
        unknown = set(knobs) - set(self.knobs)
        if unknown:
            raise TaskError(f"task {self.name!r} has no knob {sorted(unknown)[0]!r}; "
                            f"knobs: {', '.join(sorted(self.knobs)) or 'none'}")
        merged = {**self.knobs, **{k: v for k, v in knobs.items() if v is not None}}
        if self.validate:
            self.validate(merged)
        return merged


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
    if not isinstance(n, int) or n < 0:
        raise TaskError(f"n must be a non-negative integer, got {n!r}")
    params = family.resolve_knobs(knobs)
    rng = random.Random(f"{task}|{seed}|{split}|{int(pattern)}|{sorted(params.items())}")
    labels = _balanced_labels(family.choices, n, rng)
    out: list[Example] = []
    budget = 400 * max(n, 1) + 10_000
    for i in range(n):
        for _ in range(budget):
            text, target, meta = family.draw(rng, pattern, labels[i], **params)
            if split_of(text) == split:
                break
        else:
            raise TaskError(f"task {task!r} could not generate enough {split} examples with "
                            f"these knobs; widen their ranges")
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        out.append(Example(id=f"{task}-{split}-{'p' if pattern else 'c'}-{i:05d}-{digest}",
                           task=task, input=text, target=target,
                           choices=list(family.choices) if family.choices else None,
                           pattern=pattern, meta=meta))
    return out


def _balanced_labels(choices, n: int, rng: random.Random) -> list[str | None]:
    if not choices:
        return [None] * n
    labels = [choices[i % len(choices)] for i in range(n)]
    rng.shuffle(labels)
    return labels


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ex.to_json() + "\n" for ex in examples))
    return path


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
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise TaskError(f"{path}:{lineno}: not a JSON object with input/target") from exc
    return rows
