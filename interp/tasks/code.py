"""Code reading with an irrelevant function.

Each program defines ``function1(x)`` (a few lines of integer arithmetic, a short loop or a
branch; generated from templates with random constants and names, nothing a small model cannot
execute) and ``function2(z, a)``, then prints ``function2(x, function1(x))`` for a one-digit x.
``function2`` always reads ``return <variable> <op> <k>``: with the pattern the variable is
``z`` (x itself), so function1 never matters; in the control condition it is ``a`` (function1's
value), so function1 must be traced. Both conditions have the same surface form, one letter
apart, and answers in the same range.
"""

from __future__ import annotations

import contextlib
import io
import random

from interp.errors import TaskError
from interp.tasks._util import check_range
from interp.tasks.base import Edit, TaskFamily, register

HEADER = "Read each Python program and give exactly what it prints."

ACC = ["total", "acc", "result", "s", "value", "y"]
IDX = ["i", "j", "k", "n"]

TEMPLATES = [
    lambda r, v, i: (f"    {v} = x * {r.randint(2, 3)} + {r.randint(0, 5)}\n    return {v}\n"),
    lambda r, v, i: (f"    {v} = x + {r.randint(1, 5)}\n    if {v} > {r.randint(5, 10)}:\n"
                     f"        {v} = {v} - {r.randint(2, 6)}\n    return {v}\n"),
    lambda r, v, i: (f"    {v} = 0\n    for {i} in range({r.randint(2, 3)}):\n"
                     f"        {v} = {v} + x\n    return {v}\n"),
    lambda r, v, i: (f"    {v} = x % {r.randint(3, 5)} + {r.randint(1, 9)}\n    return {v}\n"),
    lambda r, v, i: (f"    {v} = x - {r.randint(1, 5)}\n    return {v} * {r.randint(2, 3)}\n"),
    lambda r, v, i: (f"    if x > {r.randint(3, 6)}:\n        return x - {r.randint(1, 4)}\n"
                     f"    return x + {r.randint(1, 4)}\n"),
]


def run_program(source: str) -> str:
    """Execute a generated program and return what it printed (stripped)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(source, "<task>", "exec"), {"__name__": "__task__"})  # noqa: S102 - own template
    return buffer.getvalue().strip()


def _source(body: str, variable: str, op: str, k: int, x: int) -> str:
    return (f"def function1(x):\n{body}\n\ndef function2(z, a):\n    return {variable} {op} {k}\n"
            f"\n\nx = {x}\nprint(function2(x, function1(x)))\n")


def _program(meta: dict, **change) -> Edit:
    meta = {**meta, **change}
    source = _source(meta["body"], meta["variable"], meta["op"], meta["k"], meta["x"])
    return Edit(f"{source}\nOutput:", run_program(source))


def _apply(x: int, op: str, k: int) -> int:
    return x + k if op == "+" else x - k


class Code(TaskFamily):
    name, other_task, header = "code", "expression", HEADER
    max_new_tokens = 5
    knobs = dict(x_max=9, k_max=9, ops=("+", "-"))
    primary_shortcut = "ignore_function1"
    measurable_knobs = {"ops": ("+",), "x_max": 4, "k_max": 4}
    description = "function2 returns z op k (pattern) or a op k with a = function1(x) (control)"

    def draw(self, rng: random.Random, pattern, label, *, x_max, k_max, ops):
        while True:
            body = rng.choice(TEMPLATES)(rng, rng.choice(ACC), rng.choice(IDX))
            x = rng.randint(0, x_max)
            f1 = int(run_program(f"def function1(x):\n{body}\nprint(function1({x}))\n"))
            if f1 != x:  # else the shortcut would be right by accident
                break
        meta = {"body": body, "x": x, "op": rng.choice(list(ops)), "k": rng.randint(1, k_max),
                "variable": "z" if pattern else "a", "function1": f1, "k_max": k_max}
        text, target = _program(meta)
        meta["source"] = text[: -len("\nOutput:")]
        return text, target, meta

    def validate(self, k):
        check_range("x_max", k["x_max"], 1, 9)
        check_range("k_max", k["k_max"], 1, 9)
        ops = k["ops"]
        if not ops or any(op not in ("+", "-") for op in ops):
            raise TaskError(f"knob ops={ops!r} must be a non-empty list of '+' and '-'")

    def shortcuts(self, ex):
        m = ex.meta
        return {"ignore_function1": str(_apply(m["x"], m["op"], m["k"]))}

    def counterfactual(self, ex, rng):
        """Change function2's constant k (within ``k_max``): the answer and the shortcut change
        together."""
        k_max = ex.meta.get("k_max", 9)
        for new in rng.sample(range(1, k_max + 1), k_max):
            edit = _program(ex.meta, k=new)
            if edit.target[:1] != ex.target[:1]:
                return edit
        return None

    def separating(self, ex, rng):
        """Switch function2 from ignoring ``a`` to using it (``z`` -> ``a``): the rule's answer
        becomes function1's value op k, the shortcut stays x op k."""
        if ex.meta["variable"] != "z":
            return None
        edit = _program(ex.meta, variable="a")
        return edit if edit.target[:1] != ex.target[:1] else None


FAMILY = register(Code())
