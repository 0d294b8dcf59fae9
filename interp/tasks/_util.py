"""Small helpers shared by the task generators."""

from __future__ import annotations

import random

from interp.errors import TaskError


def format_sum(terms: list[int]) -> str:
    """[4, -6, 2] -> '4-6+2' (the authors' compact style)."""
    text = str(terms[0])
    for t in terms[1:]:
        text += f"+{t}" if t >= 0 else f"-{-t}"
    return text


def sum_to(rng: random.Random, n_terms: int, total: int, lo: int, hi: int) -> list[int]:
    """n_terms integers in [lo, hi] that add up to total (rejection on the last term)."""
    for _ in range(10_000):
        terms = [rng.randint(lo, hi) for _ in range(n_terms - 1)]
        last = total - sum(terms)
        if lo <= last <= hi:
            return terms + [last]
    raise TaskError(f"cannot write {total} as {n_terms} terms in [{lo}, {hi}]")


def term_count(rng: random.Random, spec) -> int:
    lo, hi = (spec, spec) if isinstance(spec, int) else spec
    return rng.randint(lo, hi)


def check_range(name: str, value, lo: int, hi: int) -> None:
    lows, highs = (value, value) if isinstance(value, int) else tuple(value)
    if not (isinstance(lows, int) and isinstance(highs, int) and lo <= lows <= highs <= hi):
        raise TaskError(f"knob {name}={value!r} out of range: needs {lo} <= min <= max <= {hi}")


def other(label: str, choices) -> str:
    """The other answer of a two-way answer set."""
    return choices[1] if label == choices[0] else choices[0]
