"""Parity sequences with a hidden shortcut.

The instruction states the full rule: a sequence is labelled by the parity (even/odd) of its
number of 1s. With the pattern, the bits outside a hidden subset of positions (knob ``subset``)
always hold an even number of 1s, so the parity of the few subset bits alone gives the answer:
demonstrations cannot tell "look at the subset" from "count everything". In the control
condition the parity of the bits outside the subset is drawn 50/50 independently of the label,
so the subset shortcut (and its inverse) is right on half the control items and only the full
rule is always right. A model that is right on both follows the full rule; one that learned the
subset is at chance on the control.
"""

from __future__ import annotations

import random

from interp.errors import TaskError
from interp.tasks._util import other
from interp.tasks.base import Edit, TaskFamily, register

HEADER = "Each sequence of bits is labelled by the parity of its number of 1s: even or odd."


def _text(bits: list[int]) -> str:
    return "Sequence: " + " ".join(map(str, bits)) + "\nParity:"


def _label(bits) -> str:
    return "odd" if sum(bits) % 2 else "even"


class Parity(TaskFamily):
    name, other_task, header = "parity", "boolean", HEADER
    choices, max_new_tokens = ("even", "odd"), 2
    knobs = dict(length=14, subset=(2, 7))
    primary_shortcut, measurable_knobs = "subset", {"length": 12, "subset": (10,)}
    description = "parity of bits; outside-subset bits even (pattern) or either (control)"

    def draw(self, rng: random.Random, pattern, label, *, length, subset):
        inside = list(subset)
        outside = [i for i in range(length) if i not in inside]
        want_odd = label == "odd"
        want_rest = 0 if pattern else rng.randint(0, 1)     # control: independent of the label
        while True:
            bits = [rng.randint(0, 1) for _ in range(length)]
            rest = sum(bits[i] for i in outside) % 2
            sub = sum(bits[i] for i in inside) % 2
            if rest == want_rest and (sub + rest) % 2 == int(want_odd):
                break
        return _text(bits), label, {"bits": bits, "subset": inside,
                                    "rule": "subset" if pattern else "full"}

    def validate(self, k):
        length, subset = k["length"], k["subset"]
        if not isinstance(length, int) or not 4 <= length <= 32:
            raise TaskError(f"knob length={length!r} out of range: needs 4 <= length <= 32")
        sub = list(subset) if isinstance(subset, (list, tuple)) else None
        if (not sub or len(set(sub)) != len(sub) or len(sub) >= length - 1
                or not all(isinstance(i, int) and 0 <= i < length for i in sub)):
            raise TaskError(f"knob subset={subset!r} must be distinct positions in [0, {length}) "
                            "leaving at least two outside")

    def shortcuts(self, ex):
        bits, subset = ex.meta["bits"], ex.meta["subset"]
        return {"subset": _label([bits[i] for i in subset])}

    def _flip(self, ex, positions, rng):
        bits = list(ex.meta["bits"])
        bits[rng.choice(positions)] ^= 1
        return Edit(_text(bits), _label(bits))

    def counterfactual(self, ex, rng):
        """Flip one subset bit: the full parity and the subset's parity both change."""
        return self._flip(ex, list(ex.meta["subset"]), rng)

    def separating(self, ex, rng):
        """Flip one bit outside the subset: the full parity changes, the subset's does not."""
        subset = set(ex.meta["subset"])
        outside = [i for i in range(len(ex.meta["bits"])) if i not in subset]
        edit = self._flip(ex, outside, rng)
        if edit.target != other(ex.target, self.choices):
            raise TaskError(f"parity: the separating edit of {ex.id} kept its answer")
        return edit


FAMILY = register(Parity())
