"""Surface-cue audit of a task family.

A circuit found on a task is the circuit of whatever solves it; if a surface feature the family
did not mean to teach (prompt length, line count, the first or last number) predicts the
answer, the circuit may be that cue's. :func:`audit` fits a lookup classifier (feature value ->
most common answer among the fitting items) on one seed's items and scores it on another seed's
items, for every surface feature, and compares it with the majority answer. It also scores the
family's declared shortcut, which must solve pattern items and fail control items.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from interp.tasks.base import Example, generate, get_task

_NUMBER = re.compile(r"-?\d+")


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


FEATURES: dict[str, Callable[[Example], object]] = {
    "chars": lambda ex: len(ex.input),
    "words": lambda ex: len(ex.input.split()),
    "lines": lambda ex: ex.input.count("\n") + 1,
    "first_number": lambda ex: (_numbers(ex.input) or [None])[0],
    "last_number": lambda ex: (_numbers(ex.input) or [None])[-1],
}


def majority_accuracy(fit: Sequence[Example], score: Sequence[Example]) -> float:
    """Accuracy on ``score`` of always answering the most common answer of ``fit``."""
    top = Counter(ex.target for ex in fit).most_common(1)[0][0]
    return sum(ex.target == top for ex in score) / len(score)


def lookup_accuracy(fit: Sequence[Example], score: Sequence[Example],
                    feature: Callable[[Example], object]) -> float:
    """Accuracy on ``score`` of a lookup classifier fitted on ``fit``: each feature value maps to
    its most common answer (unseen values: the overall most common answer)."""
    overall = Counter(ex.target for ex in fit).most_common(1)[0][0]
    by_value: dict[object, Counter] = {}
    for ex in fit:
        by_value.setdefault(feature(ex), Counter())[ex.target] += 1
    table = {v: c.most_common(1)[0][0] for v, c in by_value.items()}
    return sum(table.get(feature(ex), overall) == ex.target for ex in score) / len(score)


def shortcut_accuracy(items: Sequence[Example], name: str | None = None) -> float:
    """How often a shortcut (default: the family's declared one) gives the right answer."""
    if not items:
        return float("nan")
    family = get_task(items[0].task)
    key = name or family.primary_shortcut
    return sum(family.shortcuts(ex)[key] == ex.target for ex in items) / len(items)


def audit(task: str, n: int = 400, fit_seed: int = 0, score_seed: int = 1, tokenizer=None,
          **knobs) -> list[dict]:
    """One row per (condition, feature): lookup accuracy, the majority baseline and the excess
    over it; plus a ``shortcut:<name>`` row per shortcut (its accuracy, no fitting). With a
    ``tokenizer`` the prompt's token count is one more feature (``tokens``)."""
    features = dict(FEATURES)
    if tokenizer is not None:
        features["tokens"] = lambda ex: len(tokenizer(ex.input).input_ids)
    rows = []
    for pattern in (True, False):
        condition = "pattern" if pattern else "control"
        fit = generate(task, n, seed=fit_seed, split="train", pattern=pattern, **knobs)
        score = generate(task, n, seed=score_seed, split="test", pattern=pattern, **knobs)
        majority = majority_accuracy(fit, score)
        for name, feature in features.items():
            acc = lookup_accuracy(fit, score, feature)
            rows.append({"task": task, "condition": condition, "feature": name, "accuracy": acc,
                         "majority": majority, "excess": acc - majority})
        for name in score[0].meta["shortcuts"]:
            acc = shortcut_accuracy(score, name)
            rows.append({"task": task, "condition": condition, "feature": f"shortcut:{name}",
                         "accuracy": acc, "majority": majority, "excess": acc - majority})
    return rows
