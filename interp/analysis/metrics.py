"""Patching metrics: functions of logits ``[batch, pos, vocab]`` returning ``[batch]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from interp.errors import ConfigError

Metric = Callable[[torch.Tensor], torch.Tensor]


def first_answer_token(tokenizer, text: str) -> int:
    """Id of the first token of ``text`` that is not whitespace alone.

    SmolLM2 splits " 8" into " " + "8"; scoring " " would compare nothing, so numbers are scored
    by their first digit token while " True" (one token) keeps its space.
    """
    ids = tokenizer(text, add_special_tokens=False).input_ids
    for tid in ids:
        if tokenizer.decode([tid]).strip():
            return tid
    raise ConfigError(f"answer {text!r} has no non-space token")


def logit_diff(answer_ids: Sequence[int] | torch.Tensor, foil_ids: Sequence[int] | torch.Tensor,
               position: int = -1) -> Metric:
    """logit[answer] - logit[foil] at ``position`` (the last token by default), per example."""
    ans = torch.as_tensor(answer_ids)
    foil = torch.as_tensor(foil_ids)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, position]
        rows = torch.arange(last.shape[0], device=last.device)
        return last[rows, ans.to(last.device)] - last[rows, foil.to(last.device)]

    return metric


def answer_logprob(answer_ids: Sequence[int] | torch.Tensor, position: int = -1) -> Metric:
    ans = torch.as_tensor(answer_ids)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, position].float(), dim=-1)
        rows = torch.arange(logp.shape[0], device=logp.device)
        return logp[rows, ans.to(logp.device)]

    return metric


def answer_prob(answer_ids: Sequence[int] | torch.Tensor, position: int = -1) -> Metric:
    """The probability of each prompt's answer token at ``position``."""
    logprob = answer_logprob(answer_ids, position)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logprob(logits).exp()

    return metric


def normalized_effect(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor,
                      eps: float = 1e-8) -> torch.Tensor:
    """(patched - corrupt) / (clean - corrupt): 1 = clean behaviour restored, 0 = none."""
    denom = clean - corrupt
    denom = torch.where(denom.abs() < eps, torch.full_like(denom, eps), denom)
    return (patched - corrupt) / denom
