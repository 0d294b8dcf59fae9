"""Training sequences built exactly as the zero-shot evaluator reads them.

Prompt pieces are tokenised the way :mod:`interp.engine` does (header with BOS, then the query,
then ``sep + target``), so a fine-tuned model is trained on the very token sequence it is later
scored on; EOS closes each sequence so generation stops after the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.engine import encode, right_padded
from interp.errors import ConfigError
from interp.prompts import answer_sep, build_prompt, format_demo
from interp.tasks import Example

IGNORE = -100


@dataclass
class TrainSequence:
    ids: list[int]
    labels: list[int]


def encode_example(tokenizer, ex: Example, header: bool | str = True,
                   loss_on: str = "answer") -> TrainSequence:
    """``loss_on="answer"``: loss on ``sep + target`` and EOS only; ``"text"``: on every token."""
    if loss_on not in ("answer", "text"):
        raise ConfigError(f"loss_on must be 'answer' or 'text', got {loss_on!r}")
    prompt = build_prompt(ex, (), header)
    head = encode(tokenizer, prompt.prefix, first=True) + encode(tokenizer, prompt.query, False)
    answer = encode(tokenizer, answer_sep(ex.task) + ex.target, first=False)
    if tokenizer.eos_token_id is not None:
        answer = answer + [tokenizer.eos_token_id]
    ids = head + answer
    labels = ids if loss_on == "text" else [IGNORE] * len(head) + answer
    return TrainSequence(ids, list(labels))


def encode_demo(tokenizer, ex: Example) -> TrainSequence:
    """A formatted demonstration as ICL shows it (causal-LM loss on all of it): the training
    unit of the gradient-descent baselines of *ICL and GD revisited*."""
    ids = encode(tokenizer, format_demo(ex), first=True)
    return TrainSequence(ids, list(ids))


def collate(batch: Sequence[TrainSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (pads ignored)."""
    ids = right_padded([s.ids for s in batch], pad_id)
    lengths = torch.tensor([len(s.ids) for s in batch])
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    labels = right_padded([s.labels for s in batch], IGNORE)    # as long as its ids
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_plan(lengths: Sequence[int], batch_size: int, epochs: int, seed: int,
               group_by_length: bool = False) -> list[list[int]]:
    """Indices of every batch of every epoch, fixed by the seed (so a resumed run replays the
    same order). ``group_by_length`` sorts within windows of 50 batches to cut padding."""
    plan = []
    for epoch in range(epochs):
        order = list(range(len(lengths)))
        random.Random(f"train|{seed}|{epoch}").shuffle(order)
        if group_by_length:
            window = batch_size * 50
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s: s + window], key=lambda j: -lengths[j])]
        batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        if group_by_length:
            random.Random(f"batches|{seed}|{epoch}").shuffle(batches)
        plan.extend(batches)
    return plan
