"""Expression calculation with a reducible term: ``(S)+(Z)*(C)=``.

S is a sum of positive one-digit terms up to ``s_max`` (at least two, so the answer is computed,
never copied from the input); Z and C are sums of one-digit terms of either sign. With the
pattern, Z sums to zero, so the answer is the value of S. In the control condition Z sums to a
small non-zero value (knob ``z_value``) and C to a small non-zero value (knob ``c_value``, also
in pattern items, so both conditions look alike), so ``S + Z*C`` must be computed; its answers
stay in the pattern's range (difficulty-matched).
"""

from __future__ import annotations

import random

from interp.tasks._util import check_range, format_sum, sum_to, term_count
from interp.tasks.base import Edit, TaskFamily, register

HEADER = ("Calculate the value of each arithmetic expression and write the result right after "
          "the equals sign.")
DIGITS = 9  # every term is a one-digit number


def _expression(s, z, c) -> str:
    return f"({format_sum(s)})+({format_sum(z)})*({format_sum(c)})"


def _nonzero(rng: random.Random, bound: int) -> int:
    return rng.choice([v for v in range(-bound, bound + 1) if v])


class Expression(TaskFamily):
    name, other_task, header = "expression", "code", HEADER
    answer_sep, max_new_tokens = "", 5
    knobs = dict(s_terms=(2, 3), z_terms=(2, 4), c_terms=(2, 4), z_value=2, c_value=4, s_max=9)
    primary_shortcut = "s_value"
    # none found on smollm2-135m once S must be computed (seven settings tried; see the README)
    description = "(S)+(Z)*(C)= where Z sums to 0 (pattern) or not (control)"

    def draw(self, rng, pattern, label, *, s_terms, z_terms, c_terms, z_value, c_value, s_max):
        few, many = (s_terms, s_terms) if isinstance(s_terms, int) else s_terms
        lo, hi = few, many * s_max                       # the pattern's answers: S's range
        while True:
            s = [rng.randint(1, s_max) for _ in range(term_count(rng, s_terms))]
            z_total = 0 if pattern else _nonzero(rng, z_value)
            z = sum_to(rng, term_count(rng, z_terms), z_total, -DIGITS, DIGITS)
            c = sum_to(rng, term_count(rng, c_terms), _nonzero(rng, c_value), -DIGITS, DIGITS)
            answer = sum(s) + sum(z) * sum(c)
            if lo <= answer <= hi:                       # control answers in that range too
                break
        expression = _expression(s, z, c)
        return f"{expression}=", str(answer), {"expression": expression, "s": s, "z": z, "c": c}

    def validate(self, k):
        check_range("s_terms", k["s_terms"], 2, 4)
        check_range("z_terms", k["z_terms"], 2, 6)
        check_range("c_terms", k["c_terms"], 1, 6)
        check_range("z_value", k["z_value"], 1, 9)
        check_range("c_value", k["c_value"], 1, 9)
        check_range("s_max", k["s_max"], 2, 9)

    def shortcuts(self, ex):
        return {"s_value": str(sum(ex.meta["s"]))}

    def _edit(self, ex, s, z) -> Edit:
        c = ex.meta["c"]
        return Edit(_expression(s, z, c) + "=", str(sum(s) + sum(z) * sum(c)))

    def counterfactual(self, ex, rng):
        """Change S's first term (a one-digit number for another): S's value and the answer
        change together and the answer's first digit differs."""
        s, z = ex.meta["s"], ex.meta["z"]
        top = max(max(s), 2)
        for new in rng.sample(range(1, top + 1), top):
            edit = self._edit(ex, [new] + s[1:], z)
            if edit.target[0] != ex.target[0]:
                return edit
        return None

    def separating(self, ex, rng):
        """Make Z non-zero with S fixed (one Z term moved by one, keeping its sign and digit
        count): the rule's answer changes by C, the shortcut (S) does not."""
        z = ex.meta["z"]
        for i in rng.sample(range(len(z)), len(z)):
            for step in rng.sample([-1, 1], 2):
                new = z[i] + step
                if not -DIGITS <= new <= DIGITS or (new < 0) != (z[i] < 0):
                    continue
                edit = self._edit(ex, ex.meta["s"], z[:i] + [new] + z[i + 1:])
                if edit.target[0] != ex.target[0]:
                    return edit
        return None


FAMILY = register(Expression())
