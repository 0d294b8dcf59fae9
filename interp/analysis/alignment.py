"""ICL versus gradient descent: the similarity metrics of Dai et al. (2023) as revisited by
Deutch et al. (2024), and the recording they are computed on.

Notation: ``h`` is the attention module's output (before the residual add) at the last token,
``[..., d_model]``; ``m`` the pre-softmax attention logits of the last token over the query's
own tokens, ``[..., n_query_tokens]``; subscripts ZS (zero-shot base model), ICL (base model
with the demonstrations), FT (zero-shot, model trained on the same demonstrations).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from interp.engine import encode
from interp.errors import ConfigError
from interp.models import LoadedModel
from interp.prompts import answer_sep, build_prompt
from interp.tasks import Example


def _cos(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor | None = None,
         rel: float = 1e-6) -> torch.Tensor:
    """Cosine over the last axis. With ``ref`` (the vectors the updates ``a``, ``b`` start from),
    an update smaller than ``rel * |ref|`` makes the cosine undefined: NaN, not a fake 0. (With
    rotary positions, layer 0's attention logits over the query's own tokens cannot change.)"""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    out = (a * b).sum(-1) / (na * nb).clamp_min(1e-300)
    floor = rel * ref.double().norm(dim=-1) if ref is not None else torch.zeros_like(na)
    undefined = (na <= floor) | (nb <= floor) | (na == 0) | (nb == 0)
    return torch.where(undefined, torch.full_like(out, float("nan")), out).float()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sim_aou(h_icl: torch.Tensor, h_ft: torch.Tensor, h_zs: torch.Tensor,
            normalize: bool = False) -> torch.Tensor:
    """cos(h_ICL - h_ZS, h_FT - h_ZS) over the last axis; ``normalize`` L2-normalises each output
    before differencing (SimAOU_norm, as Dai et al. computed it)."""
    if normalize:
        h_icl, h_ft, h_zs = _unit(h_icl.double()), _unit(h_ft.double()), _unit(h_zs.double())
    return _cos(h_icl - h_zs, h_ft - h_zs, ref=h_zs)


def sim_am(m_icl: torch.Tensor, m_ft: torch.Tensor) -> torch.Tensor:
    """cos(m_ICL, m_FT): raw attention logits compared, not updates."""
    return _cos(m_icl, m_ft)


def sim_am_delta(m_icl: torch.Tensor, m_ft: torch.Tensor, m_zs: torch.Tensor) -> torch.Tensor:
    """cos(m_ICL - m_ZS, m_FT - m_ZS): the attention-logit updates compared."""
    return _cos(m_icl - m_zs, m_ft - m_zs, ref=m_zs)


def rec2ftp(icl: Sequence[float] | torch.Tensor, ft: Sequence[float] | torch.Tensor,
            zs: Sequence[float] | torch.Tensor) -> float:
    """Share of the examples fine-tuning improves over zero-shot that ICL improves too:
    N[(FT > ZS) and (ICL > ZS)] / N[FT > ZS] (NaN when FT improves none)."""
    icl, ft, zs = (torch.as_tensor(v, dtype=torch.float64) for v in (icl, ft, zs))
    fixed = ft > zs
    if not fixed.any():
        return float("nan")
    return float((fixed & (icl > zs)).sum() / fixed.sum())


def kendall(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Kendall's tau-a = (concordant - discordant pairs) / (N (N - 1) / 2)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ConfigError("kendall needs two 1-D sequences of equal length >= 2")
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    n = len(a)
    return float(torch.triu(da * db, diagonal=1).sum() / (n * (n - 1) / 2))


@dataclass
class Recording:
    """Per test query: ``aou [n, layer, d_model]``; ``am`` one ``[layer, head, n_q]`` tensor per
    query (query lengths differ); ``gold [n]`` the probability of the gold answer among the
    choices; ``demo_attention`` (ICL only) one ``[layer, n_demo_tokens]`` tensor per query: the
    last token's attention to the demonstration tokens, summed over heads; ``demo_queries``
    (ICL only) ``[layer, head, n_demo_tokens, d_head]`` query vectors of those tokens."""

    aou: torch.Tensor
    am: list[torch.Tensor]
    gold: torch.Tensor
    last_q: list[torch.Tensor] | None = None
    demo_attention: list[torch.Tensor] | None = None
    demo_queries: torch.Tensor | None = None
    demo_span: tuple[int, int] | None = None


def _capture(store: dict, names: Sequence[str], keep) -> list[tuple]:
    """Forward hooks that store ``keep(name, act)`` under each hook's (alias) name."""
    def hook(name):
        def save(act, hook=None):
            store[name] = keep(name, act)
        return (name, save)
    return [hook(name) for name in names]


_RECORDED = ("hook_attn_out", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_q")


@torch.no_grad()
def record(model: LoadedModel, queries: Sequence[Example], demos: Sequence[Example] = (),
           header: bool = True) -> Recording:
    """Run the queries (after the demonstrations, if any) and keep what the metrics need.

    Queries of equal token length run as one batch; the demonstrations run once and reach every
    batch through a copy of their KV cache, so no padding ever enters a forward.
    """
    from interp.analysis.patching import LAST_ONLY, length_groups

    if not queries or not queries[0].choices:
        raise ConfigError("alignment metrics need tasks with a closed answer set (choices)")
    bridge, tok = model.bridge, model.tokenizer
    L = model.n_layers
    prefix = build_prompt(queries[0], demos, header).prefix
    prefix_ids = encode(tok, prefix, first=True)
    choice_ids = [_first_token(tok, answer_sep(queries[0].task) + c) for c in queries[0].choices]
    past, demo_queries, demo_span = None, None, None
    if prefix_ids:
        ids = torch.tensor([prefix_ids], device=model.device)
        span = (len(encode(tok, build_prompt(queries[0], (), header).prefix, True)),
                len(prefix_ids))
        store: dict = {}
        hooks = _capture(store, [f"blocks.{l}.attn.hook_q" for l in range(L)] if demos else [],
                         lambda _, a: a[0, slice(*span)].cpu())
        _, past = bridge.run_with_hooks(ids, return_type="logits_and_cache",
                                        fwd_hooks=hooks + [LAST_ONLY])
        if demos:
            demo_span = span
            demo_queries = torch.stack([store[f"blocks.{l}.attn.hook_q"]
                                        for l in range(L)]).permute(0, 2, 1, 3)
    q_ids = [encode(tok, q.input, first=not prefix_ids) for q in queries]
    n = len(queries)
    aou = torch.zeros(n, L, model.d_model)
    am: list = [None] * n
    last_q: list = [None] * n
    demo_att: list = [None] * n
    gold = torch.zeros(n)
    wanted = [r for r in _RECORDED if demo_span is not None or r != "attn.hook_pattern"]
    for n_q, idx in length_groups(q_ids).items():
        B = len(idx)
        store = {}

        def keep(name, act, n_q=n_q):
            if name.endswith("hook_attn_scores"):
                return act[:, :, -1, -n_q:].cpu()
            if name.endswith("hook_pattern"):
                return act[:, :, -1, slice(*demo_span)].sum(1).cpu()
            return act[:, -1].cpu()

        hooks = _capture(store, [f"blocks.{l}.{r}" for r in wanted for l in range(L)], keep)
        kwargs = {}
        if past is not None:
            kwargs["past_key_values"] = copy.deepcopy(past)
            kwargs["past_key_values"].batch_repeat_interleave(B)
        batch = torch.tensor([q_ids[i] for i in idx], device=model.device)
        logits = bridge.run_with_hooks(batch, fwd_hooks=hooks + [LAST_ONLY], **kwargs)
        probs = torch.softmax(logits[:, -1, choice_ids].float(), -1).cpu()
        layers = {r: torch.stack([store[f"blocks.{l}.{r}"] for l in range(L)], 1)
                  for r in wanted}  # [B, layer, ...]
        for row, i in enumerate(idx):
            aou[i] = layers["hook_attn_out"][row]
            am[i] = layers["attn.hook_attn_scores"][row]
            last_q[i] = layers["attn.hook_q"][row]
            if demo_span is not None:
                demo_att[i] = layers["attn.hook_pattern"][row]
            gold[i] = probs[row, queries[i].choices.index(queries[i].target)]
    return Recording(aou, am, gold, last_q, demo_att if demo_span else None, demo_queries,
                     demo_span)


def _first_token(tok, text: str) -> int:
    from interp.analysis.metrics import first_answer_token
    return first_answer_token(tok, text)


def compare(zs: Recording, icl: Recording, ft: Recording) -> dict:
    """All metrics, per layer and averaged over layers (and heads, for the SimAM family).
    Undefined cosines (an update of zero) are left out of the averages."""
    def heads(values):  # [n, layer, head] -> [layer]
        return torch.stack(values).nanmean(-1).nanmean(0)

    per_layer = {
        "SimAOU": sim_aou(icl.aou, ft.aou, zs.aou).nanmean(0),
        "SimAOU_norm": sim_aou(icl.aou, ft.aou, zs.aou, normalize=True).nanmean(0),
        "SimAM": heads([sim_am(i, f) for i, f in zip(icl.am, ft.am)]),
        "SimAM_before": heads([sim_am(i, z) for i, z in zip(icl.am, zs.am)]),
        "SimAM_delta": heads([sim_am_delta(i, f, z) for i, f, z in zip(icl.am, ft.am, zs.am)]),
    }
    out = {name: float(v.nanmean()) for name, v in per_layer.items()}
    out["Rec2FTP"] = rec2ftp(icl.gold, ft.gold, zs.gold)
    if icl.demo_attention is not None and icl.demo_queries is not None:
        out["Kendall"] = _kendall_icl_ft(icl)
    out["per_layer"] = {k: [round(float(x), 5) for x in v] for k, v in per_layer.items()}
    return out


def _kendall_icl_ft(icl: Recording) -> float:
    """Kendall's tau between ICL's attention to the demonstration tokens (summed over heads) and
    FT's implied attention to the same tokens as training tokens, sum_h q'_h . q_h (Dai et al.),
    with q' the demonstration tokens' queries; averaged over queries and layers."""
    taus = []
    for att, q_last in zip(icl.demo_attention, icl.last_q):
        implied = torch.einsum("lhtd,lhd->lt", icl.demo_queries.float(), q_last.float())
        taus.extend(kendall(att[l], implied[l]) for l in range(att.shape[0]))
    return float(torch.tensor(taus).mean())


def random_update(zs: Recording, icl: Recording, seed: int = 0) -> float:
    """SimAOU of the ICL update against a random direction u ~ U[0, 1) (Dai et al.'s baseline)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(icl.aou.shape, generator=gen)
    return float(_cos(icl.aou - zs.aou, u).nanmean())
