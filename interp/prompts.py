"""ICL prompt building: instruction header, k demonstrations, then the query.

A prompt is split into a ``prefix`` (header and demonstrations, shared by every query of a run,
so its KV cache can be computed once) and the ``query`` text, which is the same in every
condition (zero-shot, ICL, fine-tuned) so the conditions are comparable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interp.errors import TaskError
from interp.tasks import Example, get_task
from interp.tasks.base import REGISTRY

DEMO_SEP = "\n\n"
_SPLIT = "\x00INTERP_SPLIT\x00"


def answer_sep(task: str) -> str:
    return REGISTRY[task].answer_sep if task in REGISTRY else " "


def header_text(task: str, header: bool | str | None) -> str:
    """``True``: the family's default header; ``False``/``None``/``""``: none; a str: itself."""
    if isinstance(header, str):
        return header
    if header and task in REGISTRY:
        return REGISTRY[task].header
    return ""


def format_demo(ex: Example) -> str:
    return ex.input + answer_sep(ex.task) + ex.target


def sample_demos(pool: list[Example], k: int, seed: int = 0, balanced: bool = True) -> list[Example]:
    """k demonstrations from ``pool``, seeded; label-balanced when the answer set is closed."""
    if k < 0:
        raise TaskError(f"shot count must be >= 0, got {k}")
    if k > len(pool):
        raise TaskError(f"{k} shots asked but the demonstration pool holds only {len(pool)}")
    rng = random.Random(f"demos|{seed}|{k}")
    choices = pool[0].choices if pool else None
    if not (balanced and choices):
        return rng.sample(pool, k)
    by_label = {c: [ex for ex in pool if ex.target == c] for c in choices}
    for items in by_label.values():
        rng.shuffle(items)
    picked: list[Example] = []
    order = list(choices)
    rng.shuffle(order)
    i = 0
    while len(picked) < k:
        label = order[i % len(order)]
        if by_label[label]:
            picked.append(by_label[label].pop())
        elif not any(by_label.values()):
            break
        i += 1
    rng.shuffle(picked)
    return picked


@dataclass(frozen=True)
class Prompt:
    prefix: str
    query: str

    @property
    def text(self) -> str:
        return self.prefix + self.query


def build_prompt(query: Example, demos: list[Example] = (), header: bool | str | None = True,
                 tokenizer=None, chat: bool = False) -> Prompt:
    """Header and demonstrations go into the prefix; ``query.input`` is the query text."""
    parts = [header_text(query.task, header)] + [format_demo(d) for d in demos]
    prefix = DEMO_SEP.join(p for p in parts if p)
    prefix = prefix + DEMO_SEP if prefix else ""
    if not chat:
        return Prompt(prefix, query.input)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TaskError("chat=True needs a tokenizer with a chat template")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SPLIT}],
                                             tokenize=False, add_generation_prompt=True)
    before, after = rendered.split(_SPLIT)
    return Prompt(before + prefix, query.input + after)


def demo_pool(task: str, size: int = 256, seed: int = 0, **knobs) -> list[Example]:
    """Demonstrations always show the pattern (what ICL sees)."""
    from interp.tasks import generate

    get_task(task)
    return generate(task, size, seed=seed, split="demo", pattern=True, **knobs)
