"""Batched scoring with an optional shared-prefix KV cache.

Every prompt is ``prefix + suffix`` where the prefix (header and demonstrations) is shared by all
rows. The prefix and each suffix are tokenised separately, so the cached path (prefix KV computed
once, repeated over the batch) and the naive path (whole sequence per row) feed the model exactly
the same tokens. Suffixes are right-padded; the attention mask hides the pads and position ids
are explicit, so rows of different lengths decode correctly side by side.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch

from interp.models import LoadedModel


def encode(tokenizer, text: str, first: bool) -> list[int]:
    """Token ids of ``text``; special tokens (BOS) only for the first segment of a sequence."""
    if not text:
        return list(tokenizer("", add_special_tokens=True).input_ids) if first else []
    return list(tokenizer(text, add_special_tokens=first).input_ids)


def _chunks(n: int, size: int) -> Iterable[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


class PrefixRunner:
    """Runs many suffixes after one shared prefix, with or without a prefix KV cache."""

    def __init__(self, model: LoadedModel, prefix: str, use_cache: bool = True):
        self.model = model
        self.hf = model.hf
        self.prefix_ids = encode(model.tokenizer, prefix, first=True)
        self.use_cache = use_cache and len(self.prefix_ids) > 0
        self.pad_id = model.tokenizer.pad_token_id or 0
        self._cache = None
        if self.use_cache:
            ids = torch.tensor([self.prefix_ids], device=model.device)
            with torch.no_grad():
                out = self.hf(input_ids=ids, use_cache=True, logits_to_keep=1)
            self._cache = out.past_key_values

    @property
    def P(self) -> int:
        return len(self.prefix_ids)

    def suffix_ids(self, text: str) -> list[int]:
        return encode(self.model.tokenizer, text, first=self.P == 0)

    def _batch(self, suffixes: Sequence[list[int]]):
        device = self.model.device
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        width = int(lengths.max())
        ids = torch.full((len(suffixes), width), self.pad_id, dtype=torch.long, device=device)
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s, device=device)
        suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
        return ids, suffix_mask, lengths

    def forward(self, suffixes: Sequence[list[int]]):
        """Run prefix+suffix rows; returns (suffix logits [B, S, V], cache, attention mask, lengths)."""
        ids, suffix_mask, lengths = self._batch(suffixes)
        B, S = ids.shape
        P = self.P
        pos = (P + torch.arange(S, device=ids.device))[None].expand(B, S)
        prefix_mask = torch.ones(B, P, dtype=torch.long, device=ids.device)
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        if self.use_cache:
            cache = copy.deepcopy(self._cache)
            cache.batch_repeat_interleave(B)
            out = self.hf(input_ids=ids, attention_mask=mask, position_ids=pos,
                          past_key_values=cache, use_cache=True)
        else:
            prefix = torch.tensor(self.prefix_ids, dtype=torch.long, device=ids.device)
            full = torch.cat([prefix[None].expand(B, P), ids], dim=1)
            full_pos = torch.arange(P + S, device=ids.device)[None].expand(B, P + S)
            out = self.hf(input_ids=full, attention_mask=mask, position_ids=full_pos,
                          use_cache=True, logits_to_keep=S)
        return out.logits, out.past_key_values, mask, lengths


@torch.no_grad()
def greedy_generate(model: LoadedModel, prefix: str, queries: Sequence[str], max_new_tokens: int,
                    batch_size: int = 8, use_cache: bool = True, progress=None) -> list[str]:
    """Greedy continuations of ``prefix + query`` for each query (decoded text)."""
    runner = PrefixRunner(model, prefix, use_cache=use_cache)
    eos = model.tokenizer.eos_token_id
    texts: list[str] = []
    for chunk in _chunks(len(queries), batch_size):
        suffixes = [runner.suffix_ids(queries[i]) for i in chunk]
        logits, cache, mask, lengths = runner.forward(suffixes)
        rows = torch.arange(len(suffixes), device=logits.device)
        nxt = logits[rows, lengths - 1].argmax(-1)
        generated = [nxt]
        pos = runner.P + lengths
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model.hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                           past_key_values=cache, use_cache=True)
            cache, pos = out.past_key_values, pos + 1
            nxt = out.logits[:, -1].argmax(-1)
            generated.append(nxt)
        tokens = torch.stack(generated, dim=1).tolist()
        for row in tokens:
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
        if progress is not None:
            progress.update(len(suffixes))
    return texts


@torch.no_grad()
def choice_logprobs(model: LoadedModel, prefix: str, queries: Sequence[str],
                    choices: Sequence[str], sep: str = " ", batch_size: int = 8,
                    use_cache: bool = True, progress=None) -> torch.Tensor:
    """Summed log-probability of each ``sep + choice`` after each query: ``[n_queries, n_choices]``."""
    runner = PrefixRunner(model, prefix, use_cache=use_cache)
    choice_ids = [encode(model.tokenizer, sep + c, first=False) for c in choices]
    C = len(choices)
    out = torch.empty(len(queries), C)
    per_batch = max(1, batch_size // C) if batch_size >= C else 1
    for chunk in _chunks(len(queries), per_batch):
        suffixes, spans = [], []
        for i in chunk:
            q = runner.suffix_ids(queries[i])
            for cid in choice_ids:
                suffixes.append(q + cid)
                spans.append((len(q), len(cid)))
        logits, *_ = runner.forward(suffixes)
        logp = torch.log_softmax(logits.float(), dim=-1)
        for r, (q_len, c_len) in enumerate(spans):
            targets = torch.tensor(suffixes[r][q_len: q_len + c_len], device=logp.device)
            picked = logp[r, q_len - 1: q_len - 1 + c_len].gather(-1, targets[:, None])
            out[chunk[0] + r // C, r % C] = picked.sum().cpu()
        if progress is not None:
            progress.update(len(chunk))
    return out
