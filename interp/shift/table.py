"""The conditions of the circuit-shift experiment, in one table.

Every stage iterates this table: building the conditions (``conditions.py``), training and
random updates (``training.py``), the replicate factor of the bootstrap and the shams of each
effect (``contrasts.py``), the report's colours and readings (``report/shift.py``) and the keys of
``results.json["conditions"]``.

If you add a condition: an ICL condition (``arm="icl"``) is one :class:`ConditionSpec` entry
here with its ``demonstrations`` builder beside it (this file); a fine-tuning condition
(``arm="ft"``) is an entry here and its training data in ``training.TRAINING_DATA`` or, for an
update built without training, its builder in ``training.UPDATE_BUILDERS``. A new sham is used
by an effect once a real condition's :class:`Shams` name it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from interp.prompts import POOL_SIZE, choose_demos, relabel
from interp.tasks import Example

#: the other-task sham's search target: a prefix within 5 % of base-icl's length in tokens
LENGTH_TARGET = 0.05
#: ICL shams' prefixes within 25 % of base-icl's length, else their gate fails (demonstrations
#: come in whole items, so some family pairs cannot reach the target; the ratio is recorded)
LENGTH_TOLERANCE = 0.25
#: candidate demonstration sets of the other family searched for the closest length
LENGTH_CANDIDATES = 256

#: a prefix's length in tokens: ``length(task, demos)``
Length = Callable[[str, Sequence[Example]], int]


class Demos(NamedTuple):
    """What an ICL builder returns: the demonstrations and what is recorded about them."""
    demos: list[Example]
    label_agreement: float | None = None
    length_ratio: float | None = None
    other_task: str | None = None


def icl_real(config, demos: list[Example], seed: int, length: Length) -> Demos:
    return Demos(demos, 1.0, 1.0)


def icl_shuffled(config, demos: list[Example], seed: int, length: Length) -> Demos:
    """The same inputs, label counts kept, half the answers wrong (see ``prompts.relabel``)."""
    wrong, agreement = relabel(demos, seed=config.seed + seed)
    return Demos(wrong, agreement, length(config.task, wrong) / length(config.task, demos))


def icl_other_task(config, demos: list[Example], seed: int, length: Length) -> Demos:
    """Demonstrations of the other family at base-icl's prefix length (within
    :data:`LENGTH_TARGET`): as many as base-icl's when a set of that size comes that close
    (seeded draws from its pool), else the nearest count that does, else the closest length
    found (count and length ratio recorded)."""
    k, target = len(demos), length(config.task, demos)
    pool = choose_demos(config.other_task, min(max(64, 3 * k), POOL_SIZE),
                        seed=config.seed + seed)
    rng = random.Random(f"other-task|{config.seed + seed}")
    best, best_ratio = pool[:k], length(config.other_task, pool[:k]) / target
    counts = sorted(range(1, min(3 * k, len(pool)) + 1), key=lambda c: (abs(c - k), c))
    for count in counts[:16]:                 # at most LENGTH_CANDIDATES prefixes measured
        for _ in range(LENGTH_CANDIDATES // 16):
            pick = rng.sample(pool, count)
            ratio = length(config.other_task, pick) / target
            if abs(ratio - 1) < abs(best_ratio - 1):
                best, best_ratio = pick, ratio
            if abs(ratio - 1) <= LENGTH_TARGET:
                return Demos(pick, None, ratio, config.other_task)
    return Demos(best, None, best_ratio, config.other_task)


class Shams(NamedTuple):
    """A real condition's shams: the primary effect's, the secondary's, and the one used when
    the secondary fails its gates (None: no fallback)."""
    primary: str
    secondary: str
    fallback: str | None = None


@dataclass(frozen=True)
class ConditionSpec:
    name: str
    #: what the condition changes: ``base`` (nothing), ``icl`` (the input), ``ft`` (the weights);
    #: ICL conditions replicate over demonstration seeds, fine-tuning ones over training seeds
    arm: str
    #: ``reference`` (base-zs), ``real`` (a method) or ``sham`` (its control)
    role: str
    #: how it is built, in a few words (the report's conditions table)
    built: str
    colour: str
    #: what a sham removes, for the report's reading guide
    reading: str = ""
    shams: Shams | None = None
    #: a fine-tuning run of its own (False: an update derived from another's)
    trained: bool = False
    #: built from the other-task family's data
    other_task: bool = False
    #: ICL conditions: ``(config, base-icl's demonstrations, demonstration seed, length) ->
    #: Demos``
    demonstrations: Callable | None = None


TABLE: tuple[ConditionSpec, ...] = (
    ConditionSpec("base-zs", "base", "reference", "the base model, zero-shot", "#636efa"),
    ConditionSpec("base-icl", "icl", "real", "the base model with k demonstrations", "#ef553b",
                  shams=Shams("base-icl-other-task", "base-icl-shuffled"), demonstrations=icl_real),
    ConditionSpec("base-icl-other-task", "icl", "sham",
                  "demonstrations of another family at matched prompt length (as many when a "
                  "set that long exists)", "#f4a582",
                  "ICL changes the input: a longer prompt of demonstrations at matched length, "
                  "but of another task, removes what any long prompt does to the circuit.",
                  other_task=True, demonstrations=icl_other_task),
    ConditionSpec("base-icl-shuffled", "icl", "sham",
                  "the same demonstrations and label counts, half of the answers wrong", "#fddbc7",
                  "The same demonstrations with half the answers wrong keep the inputs and "
                  "remove most of the task information in the labels.",
                  demonstrations=icl_shuffled),
    ConditionSpec("ft-zs", "ft", "real", "the fine-tuned model, zero-shot", "#00cc96",
                  shams=Shams("ft-other-task", "ft-shuffled", "ft-random-delta"), trained=True),
    ConditionSpec("ft-other-task", "ft", "sham", "the same recipe trained on another family",
                  "#92c5de",
                  "Fine-tuning changes the weights: the same recipe on another task removes "
                  "what any fine-tuning of this size does to the circuit.",
                  trained=True, other_task=True),
    ConditionSpec("ft-shuffled", "ft", "sham", "the same recipe trained on shuffled labels",
                  "#d1e5f0",
                  "Fine-tuning on shuffled labels keeps the data's inputs and removes its answers "
                  "(it may erase the behaviour; then its gate fails).", trained=True),
    ConditionSpec("ft-random-delta", "ft", "sham",
                  "a random update with ft-zs's per-matrix rank and singular values", "#999999",
                  "A random update with the fine-tuned model's per-matrix rank and singular "
                  "values (random orthonormal factors): the pure effect of moving the weights "
                  "that far in no learned direction; always defined."),
)

SPECS = {spec.name: spec for spec in TABLE}
