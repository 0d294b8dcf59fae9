"""Expression calculation with a reducible term: ``(S)+(Z)*(C)=``.

With the pattern, Z sums to zero so the answer is the value of S; in the control condition Z is
non-zero and the whole expression must be computed.
"""

from __future__ import annotations

import random

from interp.tasks._util import check_range, format_sum, sum_to, term_count
from interp.tasks.base import TaskFamily, register

HEADER = ("Calculate the value of each arithmetic expression and write the result right after "
          "the equals sign.")


def draw(rng: random.Random, pattern: bool, label, *, s_terms, z_terms, c_terms, s_max,
         value_range):
    s = [rng.randint(0, s_max) for _ in range(term_count(rng, s_terms))]
    nz = term_count(rng, z_terms)
    if pattern:
        z = sum_to(rng, nz, 0, -value_range, value_range)
    else:
        z = sum_to(rng, nz, rng.choice([v for v in range(-value_range, value_range + 1) if v]),
                   -value_range, value_range)
    c = [rng.randint(-value_range, value_range) for _ in range(term_count(rng, c_terms))]
    expression = f"({format_sum(s)})+({format_sum(z)})*({format_sum(c)})"
    answer = sum(s) + sum(z) * sum(c)
    return f"{expression}=", str(answer), {"expression": expression, "s": s, "z": z, "c": c}


def validate(k: dict) -> None:
    check_range("s_terms", k["s_terms"], 1, 4)
    check_range("z_terms", k["z_terms"], 2, 6)
    check_range("c_terms", k["c_terms"], 1, 6)
    check_range("s_max", k["s_max"], 1, 99)
    check_range("value_range", k["value_range"], 2, 99)


FAMILY = register(TaskFamily(
    name="expression", draw=draw, header=HEADER, answer_sep="", max_new_tokens=5,
    knobs=dict(s_terms=(1, 2), z_terms=(2, 4), c_terms=4, s_max=10, value_range=20),
    validate=validate,
    description="(S)+(Z)*(C)= where Z sums to 0 (pattern) or not (control)"))
