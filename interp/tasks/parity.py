"""Parity sequences with a hidden shortcut.

The instruction states the full rule: a sequence is labelled by the parity (even/odd) of its
number of 1s. With the pattern, the bits outside a hidden subset of positions (knob ``subset``)
always hold an even number of 1s, so the parity of the few subset bits alone gives the answer:
demonstrations cannot tell "look at the subset" from "count everything". In the control
condition the bits outside the subset hold an odd number of 1s, so the subset shortcut is always
wrong and only the full rule is right. A model that is right on both follows the full rule; one
that learned the subset fails the control.
"""

from __future__ import annotations

import random

from interp.errors import TaskError
from interp.tasks.base import TaskFamily, register

HEADER = ("Each sequence of bits is labelled by the parity of its number of 1s: even or odd.")


def draw(rng: random.Random, pattern: bool, label: str, *, length, subset):
    inside = list(subset)
    outside = [i for i in range(length) if i not in inside]
    want_odd = label == "odd"
    while True:
        bits = [rng.randint(0, 1) for _ in range(length)]
        rest = sum(bits[i] for i in outside) % 2
        sub = sum(bits[i] for i in inside) % 2
        if rest == (0 if pattern else 1) and (sub + rest) % 2 == int(want_odd):
            break
    text = "Sequence: " + " ".join(map(str, bits)) + "\nParity:"
    return text, label, {"bits": bits, "subset": inside, "rule": "subset" if pattern else "full"}


def validate(k: dict) -> None:
    length, subset = k["length"], k["subset"]
    if not isinstance(length, int) or not 4 <= length <= 32:
        raise TaskError(f"knob length={length!r} out of range: needs 4 <= length <= 32")
    sub = list(subset) if isinstance(subset, (list, tuple)) else None
    if (not sub or len(set(sub)) != len(sub) or len(sub) >= length - 1
            or not all(isinstance(i, int) and 0 <= i < length for i in sub)):
        raise TaskError(f"knob subset={subset!r} must be distinct positions in [0, {length}) "
                        "leaving at least two outside")


FAMILY = register(TaskFamily(
    name="parity", draw=draw, header=HEADER, choices=("even", "odd"), max_new_tokens=2,
    knobs=dict(length=12, subset=(2, 7)), validate=validate,
    description="parity of bits; outside-subset bits even (pattern) or odd (control)"))
