"""ICL versus gradient descent: the similarity metrics of Dai et al. (2023) as revisited by
Deutch et al. (2024), and the recording they are computed on.

Notation: ``h`` is the attention module's output (before the residual add) at the last token,
``[..., d_model]``; ``m`` the pre-softmax attention logits of the last token over the query's
own tokens, ``[..., n_query_tokens]``; subscripts ZS (zero-shot base model), ICL (base model
with the demonstrations), FT (zero-shot, model trained on the same demonstrations).

Conventions of the reference implementation (Dai et al.'s ``compute_sim.py``): cosines are
``torch.nn.functional.cosine_similarity`` with ``eps=1e-8``, so an update of zero (with rotary
positions, layer 0's logits over the query's own tokens cannot change) scores 0; here such
updates are also counted (``zero_updates``), never silently dropped. Rec2FTP counts correctness:
among the queries zero-shot gets wrong and FT gets right, the share ICL gets right. Kendall's tau
compares ICL's attention to the demonstration tokens with FT's implied attention to them as
training tokens, sum_h Q'_h . q_h, where Q' are the queries of each demonstration's tokens in its
own fine-tuning pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interp.analysis.metrics import first_answer_token
from interp.engine import encode, forward, length_groups, repeat_cache
from interp.errors import ConfigError
from interp.models import LoadedModel
from interp.prompts import DEMO_SEP, answer_sep, format_demo, header_text
from interp.tasks import Example

EPS = 1e-8          # the reference implementation's cosine eps
ZERO_REL = 1e-6     # an update smaller than this share of its reference counts as zero


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine over the last axis as the reference computes it (a zero vector scores 0)."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1, eps=EPS).float()


def zero_updates(delta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Where an update is zero relative to what it updates (``|delta| <= 1e-6 |ref|``)."""
    return delta.double().norm(dim=-1) <= ZERO_REL * ref.double().norm(dim=-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sim_aou(h_icl: torch.Tensor, h_ft: torch.Tensor, h_zs: torch.Tensor,
            normalize: bool = False) -> torch.Tensor:
    """cos(h_ICL - h_ZS, h_FT - h_ZS) over the last axis; ``normalize`` L2-normalises each output
    before differencing (SimAOU_norm, as Dai et al. computed it)."""
    if normalize:
        h_icl, h_ft, h_zs = _unit(h_icl.double()), _unit(h_ft.double()), _unit(h_zs.double())
    return cosine(h_icl - h_zs, h_ft - h_zs)


def sim_am(m_icl: torch.Tensor, m_ft: torch.Tensor) -> torch.Tensor:
    """cos(m_ICL, m_FT): raw attention logits compared, not updates."""
    return cosine(m_icl, m_ft)


def sim_am_delta(m_icl: torch.Tensor, m_ft: torch.Tensor, m_zs: torch.Tensor) -> torch.Tensor:
    """cos(m_ICL - m_ZS, m_FT - m_ZS): the attention-logit updates compared."""
    return cosine(m_icl - m_zs, m_ft - m_zs)


def rec2ftp(icl_correct, ft_correct, zs_correct) -> tuple[float, int]:
    """Among queries zero-shot gets wrong and FT gets right, the share ICL gets right; and that
    number of queries N (the value is NaN when N = 0)."""
    icl, ft, zs = (torch.as_tensor(v, dtype=torch.bool) for v in (icl_correct, ft_correct,
                                                                 zs_correct))
    fixed = ft & ~zs
    n = int(fixed.sum())
    return (float((fixed & icl).sum()) / n if n else float("nan")), n


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
    query; ``gold [n]`` the probability of the gold answer among the choices and ``correct [n]``
    whether it is the most probable; ``last_q`` one ``[layer, head, d_head]`` per query (the last
    token's query vectors, before rotary); ``demo_attention`` (ICL only) one ``[layer, n_tokens]``
    per query: the last token's attention to each demonstration token, summed over heads."""

    aou: torch.Tensor
    am: list[torch.Tensor]
    gold: torch.Tensor
    correct: torch.Tensor
    last_q: list[torch.Tensor]
    demo_attention: list[torch.Tensor] | None = None
    demo_positions: list[int] | None = None


def demo_prefix(tokenizer, task: str, demos: Sequence[Example], header: bool = True
                ) -> tuple[list[int], list[int]]:
    """The ICL prefix tokenised piece by piece (header, then each demonstration and separator)
    and the positions of the demonstrations' own tokens in it: exactly the tokens each
    demonstration has in its fine-tuning pass (after any BOS)."""
    head = header_text(task, header)
    ids = encode(tokenizer, head + DEMO_SEP if head else "", first=True)
    positions: list[int] = []
    sep = encode(tokenizer, DEMO_SEP, first=False)
    for d in demos:
        own = encode(tokenizer, format_demo(d), first=False)
        positions += list(range(len(ids), len(ids) + len(own)))
        ids += own + sep
    return ids, positions


_RECORDED = ("hook_attn_out", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_q")


@torch.no_grad()
def record(model: LoadedModel, queries: Sequence[Example], demos: Sequence[Example] = (),
           header: bool = True) -> Recording:
    """Run the queries (after the demonstrations, if any) and keep what the metrics need.

    Queries of equal token length run as one batch; the prefix runs once and reaches every
    batch through a copy of its KV cache, so no padding ever enters a forward.
    """
    if not queries or not queries[0].choices:
        raise ConfigError("alignment metrics need tasks with a closed answer set (choices)")
    tok, L = model.tokenizer, model.n_layers
    task = queries[0].task
    prefix_ids, positions = demo_prefix(tok, task, demos, header)
    choice_ids = [first_answer_token(tok, answer_sep(task) + c) for c in queries[0].choices]
    past = None
    if prefix_ids:
        out = model.hf(input_ids=torch.tensor([prefix_ids], device=model.device),
                       use_cache=True, logits_to_keep=1)
        past = out.past_key_values
    q_ids = [encode(tok, q.input, first=not prefix_ids) for q in queries]
    n = len(queries)
    aou = torch.zeros(n, L, model.d_model)
    am: list = [None] * n
    last_q: list = [None] * n
    demo_att: list = [None] * n
    gold, correct = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    wanted = [r for r in _RECORDED if demos or r != "attn.hook_pattern"]
    pos = torch.tensor(positions, dtype=torch.long)
    for n_q, idx in length_groups(q_ids).items():
        store: dict = {}

        def keep(name, n_q=n_q):
            def fn(act, hook=None):
                if name.endswith("hook_attn_scores"):
                    store[name] = act[:, :, -1, -n_q:].float().cpu()
                elif name.endswith("hook_pattern"):
                    store[name] = act[:, :, -1].sum(1)[:, pos.to(act.device)].float().cpu()
                else:
                    store[name] = act[:, -1].float().cpu()
            return fn

        hooks = [(f"blocks.{l}.{r}", keep(f"blocks.{l}.{r}")) for r in wanted for l in range(L)]
        batch_past = repeat_cache(past, len(idx)) if past is not None else None
        batch = torch.tensor([q_ids[i] for i in idx], device=model.device)
        logits = forward(model, batch, batch_past, hooks)
        probs = torch.softmax(logits[:, -1, choice_ids].float(), -1).cpu()
        layers = {r: torch.stack([store[f"blocks.{l}.{r}"] for l in range(L)], 1)
                  for r in wanted}  # [B, layer, ...]
        for row, i in enumerate(idx):
            aou[i] = layers["hook_attn_out"][row]
            am[i] = layers["attn.hook_attn_scores"][row]
            last_q[i] = layers["attn.hook_q"][row]
            if demos:
                demo_att[i] = layers["attn.hook_pattern"][row]
            target = queries[i].choices.index(queries[i].target)
            gold[i] = probs[row, target]
            correct[i] = bool(probs[row].argmax() == target)
    return Recording(aou, am, gold, correct, last_q, demo_att if demos else None,
                     positions if demos else None)


def compare(zs: Recording, icl: Recording, ft: Recording,
            ft_queries: torch.Tensor | None = None, seed: int = 0) -> dict:
    """All metrics, per layer and averaged over layers (and heads, for the SimAM family), with
    how many updates were zero. ``ft_queries`` ``[layer, n_demo_tokens, head, d_head]`` are the
    demonstrations' queries in their fine-tuning passes (for Kendall)."""
    per_layer = {
        "SimAOU": sim_aou(icl.aou, ft.aou, zs.aou).mean(0),
        "SimAOU_norm": sim_aou(icl.aou, ft.aou, zs.aou, normalize=True).mean(0),
        "SimAM": torch.stack([sim_am(i, f) for i, f in zip(icl.am, ft.am)]).mean(-1).mean(0),
        "SimAM_before": torch.stack([sim_am(i, z) for i, z in zip(icl.am, zs.am)]).mean(-1)
        .mean(0),
        "SimAM_delta": torch.stack([sim_am_delta(i, f, z) for i, f, z in
                                    zip(icl.am, ft.am, zs.am)]).mean(-1).mean(0),
    }
    out = {name: float(v.mean()) for name, v in per_layer.items()}
    zeros = {
        "aou_icl": int(zero_updates(icl.aou - zs.aou, zs.aou).sum()),
        "aou_ft": int(zero_updates(ft.aou - zs.aou, zs.aou).sum()),
        "am_icl": int(sum(zero_updates(i - z, z).sum() for i, z in zip(icl.am, zs.am))),
        "am_ft": int(sum(zero_updates(f - z, z).sum() for f, z in zip(ft.am, zs.am))),
    }
    out["zero_updates"] = zeros
    out["Rec2FTP"], out["Rec2FTP_N"] = rec2ftp(icl.correct, ft.correct, zs.correct)
    if icl.demo_attention is not None and ft_queries is not None:
        out["Kendall"], out["Kendall_random"] = kendall_icl_ft(icl, ft, ft_queries, seed)
    out["per_layer"] = {k: [round(float(x), 5) for x in v] for k, v in per_layer.items()}
    return out


def kendall_icl_ft(icl: Recording, ft: Recording, ft_queries: torch.Tensor,
                   seed: int = 0) -> tuple[float, float]:
    """Kendall's tau between ICL's attention to the demonstration tokens (summed over heads) and
    FT's implied attention sum_h Q'_h . q_h (Q' from the fine-tuning passes, q the FT model's
    last-token queries), averaged over queries and layers; and the same against random
    attention (the baseline)."""
    if ft_queries.shape[1] != icl.demo_attention[0].shape[-1]:
        raise ConfigError("fine-tuning-pass queries and ICL demonstration tokens do not align")
    gen = torch.Generator().manual_seed(seed)
    taus, random_taus = [], []
    for att, q_last in zip(icl.demo_attention, ft.last_q):
        implied = torch.einsum("lthd,lhd->lt", ft_queries.float(), q_last.float())
        for l in range(att.shape[0]):
            taus.append(kendall(att[l], implied[l]))
            random_taus.append(kendall(att[l], torch.rand(att.shape[-1], generator=gen)))
    return float(torch.tensor(taus).mean()), float(torch.tensor(random_taus).mean())


def random_update(zs: Recording, icl: Recording, seed: int = 0) -> float:
    """SimAOU of the ICL update against a random direction u ~ U[0, 1) (Dai et al.'s baseline)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(icl.aou.shape, generator=gen)
    return float(cosine(icl.aou - zs.aou, u).mean())
