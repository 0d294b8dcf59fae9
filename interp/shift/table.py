"""The conditions of the circuit-shift experiment, in one table.

Every stage iterates this table: building the conditions (``conditions.py``), training and
random updates (``training.py``), the replicate factor of the bootstrap and the shams of each
effect (``compare.py``), the report's colours and readings (``report/shift.py``) and the keys of
``results.json["conditions"]``.

If you add a condition: one :class:`ConditionSpec` entry here and its builder: an ICL condition
(``arm="icl"``) in ``conditions.ICL_BUILDERS`` (its demonstrations), a fine-tuning condition
(``arm="ft"``) in ``training.TRAINING_DATA`` (its training data) or, for an update built without
training, in ``training.UPDATE_BUILDERS``. A new sham is used by an effect once a real
condition's :class:`Shams` name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


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


TABLE: tuple[ConditionSpec, ...] = (
    ConditionSpec("base-zs", "base", "reference", "the base model, zero-shot", "#636efa"),
    ConditionSpec("base-icl", "icl", "real", "the base model with k demonstrations", "#ef553b",
                  shams=Shams("base-icl-other-task", "base-icl-shuffled")),
    ConditionSpec("base-icl-other-task", "icl", "sham",
                  "demonstrations of another family at matched prompt length", "#f4a582",
                  "ICL changes the input: a longer prompt of demonstrations at matched length, "
                  "but of another task, removes what any long prompt does to the circuit.",
                  other_task=True),
    ConditionSpec("base-icl-shuffled", "icl", "sham",
                  "the same demonstrations, half of the answers wrong", "#fddbc7",
                  "The same demonstrations with half the answers wrong keep the inputs and "
                  "remove most of the task information in the labels."),
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
                  "a random update with ft-zs's per-matrix norms", "#999999",
                  "A random update with the fine-tuned model's per-matrix norms: the pure effect "
                  "of moving the weights that far; always defined."),
)

SPECS = {spec.name: spec for spec in TABLE}
