"""Boolean expressions decided by a trailing term.

Groups of 2-4 literals are joined by and/or and the whole body is wrapped in parentheses; a
trailing ``<op> <literal>`` follows. With the pattern, the trailing term decides the answer
(``and False`` / ``or True``). Two shortcuts fit pattern data equally well: the **last literal**
(the declared one) and the **operator** (``and`` -> False, ``or`` -> True). In the control
condition the trailing term is ``and True`` / ``or False``, which decides nothing, so the body
must be evaluated; there the two shortcuts give opposite answers, each right on half of the
items (the suffix is drawn independently of the label), so the control separates them.
Pattern and control have the same surface form.
"""

from __future__ import annotations

import random
import re

from interp.tasks._util import check_range, other, term_count
from interp.tasks.base import Edit, Example, TaskFamily, register

HEADER = "Evaluate each Boolean expression and answer True or False."
_LITERAL = re.compile(r"\b(True|False)\b")


def _render(sizes: list[int], literals: list[str], ops: list[str]) -> str:
    """Groups of ``sizes`` literals; ``ops`` join the literals inside groups, then the groups."""
    lits, joins = iter(literals), iter(ops)
    groups = []
    for size in sizes:
        parts = [next(lits)]
        for _ in range(size - 1):
            parts += [next(joins), next(lits)]
        groups.append("(" + " ".join(parts) + ")")
    body = [groups[0]]
    for group in groups[1:]:
        body += [next(joins), group]
    return "(" + " ".join(body) + ")"


def _body(rng: random.Random, groups, literals, want: bool | None = None) -> str:
    """A random body; with ``want``, one whose value is ``want``, found by shuffling the drawn
    literals and operators among their places. A draw is kept only if shuffles reach both
    values, so the counts of True/False and and/or (hence the text's length) follow the same
    distribution whatever the answer."""
    while True:
        sizes = [term_count(rng, literals) for _ in range(groups)]
        lits = [rng.choice(["True", "False"]) for _ in range(sum(sizes))]
        ops = [rng.choice(["and", "or"]) for _ in range(sum(sizes) - 1)]
        if want is None:
            return _render(sizes, lits, ops)
        found: dict[bool, str] = {}
        for _ in range(50):
            body = _render(sizes, lits, ops)
            found.setdefault(_value(body), body)
            if len(found) == 2:
                return found[want]
            rng.shuffle(lits)
            rng.shuffle(ops)


def _value(expression: str) -> bool:
    return bool(eval(expression))  # noqa: S307 - made of True/False/and/or/() only


def _text(expression: str) -> str:
    return f"{expression}\nResult:"


class Boolean(TaskFamily):
    name, other_task, header = "boolean", "relation", HEADER
    choices, max_new_tokens = ("False", "True"), 2
    knobs = dict(groups=3, literals=(2, 4))
    primary_shortcut, separating_on_pattern = "last_literal", False
    description = "(body) and False / or True decides (pattern); and True / or False (control)"

    def draw(self, rng, pattern, label, *, groups, literals):
        want = label == "True"
        if pattern:
            body = _body(rng, groups, literals)
            suffix = "or True" if want else "and False"
        else:
            suffix = rng.choice(["and True", "or False"])  # independent of the label
            body = _body(rng, groups, literals, want)
        expression = f"{body} {suffix}"
        return _text(expression), label, {"expression": expression}

    def validate(self, k):
        check_range("groups", k["groups"], 1, 5)
        check_range("literals", k["literals"], 1, 6)

    def shortcuts(self, ex: Example) -> dict[str, str]:
        op, literal = ex.meta["expression"].rsplit(" ", 2)[1:]
        return {"last_literal": literal, "operator": "True" if op == "or" else "False"}

    def counterfactual(self, ex, rng):
        """Swap the deciding suffix: ``and False`` <-> ``or True`` (pattern items)."""
        swap = {" and False": " or True", " or True": " and False"}
        expr = ex.meta["expression"]
        for old, new in swap.items():
            if expr.endswith(old):
                return Edit(_text(expr[: -len(old)] + new), other(ex.target, self.choices))
        return None

    def separating(self, ex, rng):
        """On a control item, flip one body literal that changes the body's value: the rule's
        answer flips, both shortcuts (the suffix) stay."""
        expr = ex.meta["expression"]
        body, suffix = expr.rsplit(" ", 2)[0], " ".join(expr.rsplit(" ", 2)[1:])
        if suffix not in ("and True", "or False"):
            return None
        spots = list(_LITERAL.finditer(body))
        for m in rng.sample(spots, len(spots)):
            flipped = "False" if m.group() == "True" else "True"
            new_body = body[: m.start()] + flipped + body[m.end():]
            if _value(new_body) != _value(body):
                return Edit(_text(f"{new_body} {suffix}"), str(_value(f"{new_body} {suffix}")))
        return None


FAMILY = register(Boolean())
