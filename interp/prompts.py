"""ICL prompts: instruction header, k demonstrations, then the query; and the one
demonstration chooser.

A prompt is split into a ``prefix`` (header and demonstrations, shared by every query of a run,
so its KV cache can be computed once) and the ``query`` text, which is the same in every
condition (zero-shot, ICL, fine-tuned) so the conditions are comparable.

:func:`choose_demos` is the only way demonstrations are picked: a seeded, label-balanced order
of the task's demonstration pool, of which a k-shot run takes the first k. Shot counts therefore
draw nested sets (the 8-shot set holds the 4-shot set), and every stage and command that asks
for ``(task, shots, seed)`` gets the same demonstrations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from interp.errors import TaskError
from interp.tasks import REGISTRY, Example, generate, get_task

DEMO_SEP = "\n\n"
POOL_SIZE = 256
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


def demo_pool(task: str, size: int = POOL_SIZE, seed: int = 0, **knobs) -> list[Example]:
    """The demonstration pool: pattern examples of the ``demo`` split (what ICL sees)."""
    get_task(task)
    return generate(task, size, seed=seed, split="demo", pattern=True, **knobs)


def demo_order(pool: Sequence[Example], seed: int = 0) -> list[Example]:
    """A seeded order of ``pool`` in which every prefix is as label-balanced as the pool allows
    (labels take turns, in a seeded label order); open answer sets are simply shuffled."""
    rng = random.Random(f"demo-order|{seed}")
    items = list(pool)
    rng.shuffle(items)
    choices = items[0].choices if items else None
    if not choices:
        return items
    queues = {c: [ex for ex in items if ex.target == c] for c in choices}
    labels = list(choices)
    rng.shuffle(labels)
    order: list[Example] = []
    while any(queues.values()):
        for label in labels:
            if queues[label]:
                order.append(queues[label].pop())
    return order


def choose_demos(task: str, shots: int, seed: int = 0, pool_size: int = POOL_SIZE,
                 pool: Sequence[Example] | None = None, **knobs) -> list[Example]:
    """The first ``shots`` demonstrations of the seeded order of the task's pool (nested across
    shot counts). ``pool`` replaces the generated pool (e.g. user JSONL rows)."""
    if not isinstance(shots, int) or shots < 0:
        raise TaskError(f"shot count must be a non-negative integer, got {shots!r}")
    if pool is None:
        if shots > pool_size:
            raise TaskError(f"{shots} shots asked but the demonstration pool holds only "
                            f"{pool_size}")
        pool = demo_pool(task, pool_size, seed=seed, **knobs)
    if shots > len(pool):
        raise TaskError(f"{shots} shots asked but the demonstration pool holds only {len(pool)}")
    return demo_order(pool, seed)[:shots]


def relabel(demos: Sequence[Example], seed: int = 0,
            wrong: int | None = None) -> tuple[list[Example], float]:
    """The same demonstrations with some answers wrong; returns them and the share of answers
    kept right.

    Closed answer sets keep the label counts: the answers of the wrong positions are permuted
    among themselves so that each gets another label (with two labels, ``wrong / 2`` of each
    swap). The default ``wrong`` is ``2 * (k // 4)``: exactly half when k is a multiple of 4,
    fewer otherwise (the share is returned and recorded). Open answer sets (numbers) take
    another demonstration's answer at ``k // 2`` (default) positions."""
    demos = list(demos)
    if not demos:
        return [], 1.0
    rng = random.Random(f"relabel|{seed}")
    if demos[0].choices:
        flip = _balanced_flips(demos, rng, 2 * (len(demos) // 4) if wrong is None else wrong)
    else:
        flip = _open_flips(demos, rng, len(demos) // 2 if wrong is None else wrong)
    out = [replace(d, target=flip[i], meta={**d.meta, "relabelled": True}) if i in flip else d
           for i, d in enumerate(demos)]
    return out, 1 - len(flip) / len(demos)


def _balanced_flips(demos: list[Example], rng: random.Random, wrong: int) -> dict[int, str]:
    """Positions -> new labels: ``wrong`` positions (fewer if the labels cannot be balanced)
    drawn round-robin over the labels, their labels rotated by half so none keeps its own."""
    by_label: dict[str, list[int]] = {}
    for i, d in enumerate(demos):
        by_label.setdefault(d.target, []).append(i)
    for positions in by_label.values():
        rng.shuffle(positions)
    chosen: list[int] = []
    while len(chosen) < wrong:
        # the two labels with most positions left give one each: the choice stays balanced
        left = sorted((lab for lab in by_label if by_label[lab]),
                      key=lambda lab: (-len(by_label[lab]), rng.random()))
        if len(left) < 2 or len(chosen) + 2 > wrong:
            break
        chosen += [by_label[left[0]].pop(), by_label[left[1]].pop()]
    chosen.sort(key=lambda i: demos[i].target)
    half = len(chosen) // 2
    return {i: demos[chosen[(j + half) % len(chosen)]].target for j, i in enumerate(chosen)}


def _open_flips(demos: list[Example], rng: random.Random, wrong: int) -> dict[int, str]:
    """Positions -> another demonstration's answer (else a shifted number)."""
    out = {}
    for i in sorted(rng.sample(range(len(demos)), min(wrong, len(demos)))):
        d = demos[i]
        others = [x.target for x in demos if x.target != d.target]
        others = others or [str(int(d.target) + 1) if d.target.lstrip("-").isdigit()
                            else d.target + "0"]
        out[i] = rng.choice(others)
    return out


@dataclass(frozen=True)
class Prompt:
    prefix: str
    query: str

    @property
    def text(self) -> str:
        return self.prefix + self.query


def prefix_text(task: str, demos: Sequence[Example] = (), header: bool | str | None = True,
                tokenizer=None, chat: bool = False) -> str:
    """The shared prefix of every query of ``task`` under ``demos``."""
    return build_prompt(Example("", task, "", "", None, True), demos, header, tokenizer,
                        chat).prefix


def build_prompt(query: Example, demos: Sequence[Example] = (), header: bool | str | None = True,
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
