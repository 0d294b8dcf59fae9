"""Boolean expressions decided by a trailing term.

Three parenthesised groups of 2-4 literals are joined by and/or and the whole is wrapped in
parentheses. With the pattern a trailing ``and False`` / ``or True`` decides the answer; in the
control condition the trailing term is ``and True`` / ``or False``, which decides nothing, so the
groups must be evaluated. The surface form is the same in both.
"""

from __future__ import annotations

import random

from interp.tasks._util import check_range, term_count
from interp.tasks.base import TaskFamily, register

HEADER = "Evaluate each Boolean expression and answer True or False."


def _group(rng: random.Random, literals) -> str:
    n = term_count(rng, literals)
    parts = [rng.choice(["True", "False"])]
    for _ in range(n - 1):
        parts += [rng.choice(["and", "or"]), rng.choice(["True", "False"])]
    return "(" + " ".join(parts) + ")"


def _body(rng: random.Random, groups, literals) -> str:
    parts = [_group(rng, literals)]
    for _ in range(groups - 1):
        parts += [rng.choice(["and", "or"]), _group(rng, literals)]
    return "(" + " ".join(parts) + ")"


def draw(rng: random.Random, pattern: bool, label: str, *, groups, literals):
    want = label == "True"
    if pattern:
        body = _body(rng, groups, literals)
        suffix = "or True" if want else "and False"
    else:
        while True:
            body = _body(rng, groups, literals)
            if eval(body) == want:  # noqa: S307 - body is made of True/False/and/or/() only
                break
        suffix = rng.choice(["and True", "or False"])
    expression = f"{body} {suffix}"
    return f"{expression}\nResult:", label, {"expression": expression}


def validate(k: dict) -> None:
    check_range("groups", k["groups"], 1, 5)
    check_range("literals", k["literals"], 1, 6)


FAMILY = register(TaskFamily(
    name="boolean", draw=draw, header=HEADER, choices=("False", "True"), max_new_tokens=2,
    knobs=dict(groups=3, literals=(2, 4)), validate=validate,
    description="(groups) and False / or True decides (pattern); and True / or False (control)"))
