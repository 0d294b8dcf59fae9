"""Code reading with an irrelevant function.

Each program defines a distractor ``function1(x)`` (loops, arithmetic, math calls; generated from
templates with random constants and names) and ``function2(z, a)``, then prints
``function2(x, function1(x))`` for x in 0..10. With the pattern, ``function2`` ignores ``a`` and
returns ``z <op> k``, so function1 never matters; in the control condition ``function2`` adds
``a``, so function1 must be traced.
"""

from __future__ import annotations

import contextlib
import io
import random

from interp.tasks._util import check_range
from interp.tasks.base import TaskFamily, register

HEADER = "Read each Python program and give exactly what it prints."

ACC = ["total", "acc", "result", "s", "value"]
IDX = ["i", "j", "k", "n"]

TEMPLATES = [
    lambda r, v, i: (f"    {v} = 0\n    for {i} in range({r.randint(3, 7)}):\n"
                     f"        {v} += (x * {r.randint(2, 9)} + {i}) % {r.randint(5, 13)}\n"
                     f"    return {v}\n"),
    lambda r, v, i: (f"    {v} = math.sin(x) * {r.randint(3, 20)} + math.cos(x * {r.randint(2, 5)})\n"
                     f"    return int(abs({v})) % {r.randint(7, 19)}\n"),
    lambda r, v, i: (f"    {v} = {r.randint(2, 7)} * x ** 2 - {r.randint(1, 9)} * x + {r.randint(0, 9)}\n"
                     f"    return {v} % {r.randint(11, 29)}\n"),
    lambda r, v, i: (f"    {i} = x + {r.randint(2, 9)}\n    {v} = 0\n"
                     f"    while {i} != 1 and {v} < {r.randint(8, 20)}:\n"
                     f"        {i} = {i} // 2 if {i} % 2 == 0 else 3 * {i} + 1\n"
                     f"        {v} += 1\n    return {v}\n"),
    lambda r, v, i: (f"    {v} = [(x + {i}) ** 2 % {r.randint(5, 11)} for {i} in range({r.randint(3, 6)})]\n"
                     f"    return sum({v}) - max({v})\n"),
    lambda r, v, i: (f"    {v} = math.log(x + {r.randint(2, 9)}) * {r.randint(2, 9)} + math.exp(-x)\n"
                     f"    return int({v})\n"),
    lambda r, v, i: (f"    {v} = 0\n    for {i} in range({r.randint(3, 6)}):\n"
                     f"        for m in range({i}):\n"
                     f"            if ({i} * m + x) % {r.randint(2, 5)} == 0:\n"
                     f"                {v} += 1\n    return {v}\n"),
]
OPS = ["+", "-", "*", "//"]


def run_program(source: str) -> str:
    """Execute a generated program and return what it printed (stripped)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(source, "<task>", "exec"), {"__name__": "__task__"})  # noqa: S102 - own template
    return buffer.getvalue().strip()


def draw(rng: random.Random, pattern: bool, label, *, x_max, k_max):
    body = rng.choice(TEMPLATES)(rng, rng.choice(ACC), rng.choice(IDX))
    op, k, x = rng.choice(OPS), rng.randint(1, k_max), rng.randint(0, x_max)
    ret = f"z {op} {k}" if pattern else f"z {op} {k} + a"
    source = (f"import math\n\n\ndef function1(x):\n{body}\n\ndef function2(z, a):\n"
              f"    return {ret}\n\n\nx = {x}\nprint(function2(x, function1(x)))\n")
    text = f"{source}\nOutput:"
    return text, run_program(source), {"source": source, "x": x, "op": op, "k": k}


def validate(k: dict) -> None:
    check_range("x_max", k["x_max"], 1, 99)
    check_range("k_max", k["k_max"], 1, 9)


FAMILY = register(TaskFamily(
    name="code", draw=draw, header=HEADER, max_new_tokens=5,
    knobs=dict(x_max=10, k_max=9), validate=validate,
    description="function2 ignores function1's value (pattern) or adds it (control)"))
