"""Probes beyond the component scores, all on the run's one demonstration set: faithfulness of
each condition's circuit (own and cross-condition), a logit lens on control queries that tracks
every shortcut the family declares, attention of the top heads, and the function-vector ICL
heads of the base model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp.analysis.components import COMPONENT_KINDS, head_name
from interp.analysis.icl_heads import circuit_usage, find_icl_heads, function_vector, inject
from interp.analysis.metrics import first_answer_token, logit_diff
from interp.analysis.patching import first_difference, set_values, stacked_sets
from interp.arch import unembed
from interp.circuits import ScoreMap, components, top_k
from interp.engine import (
    capture,
    encode,
    forward,
    length_groups,
    prefix_cache,
    repeat_cache,
)
from interp.prompts import answer_sep
from interp.shift.conditions import Condition, PairSet
from interp.shift.config import ShiftConfig
from interp.shift.measure import ConditionRunner
from interp.tasks import generate, get_task

FAITHFULNESS_SIZES = (1, 2, 5, 10, 20)


def _pair_batches(runner: ConditionRunner, condition: Condition, pairs: PairSet):
    prefix = runner.prefix(condition)
    for idx in length_groups(pairs.clean).values():
        device = runner.model.device
        clean = torch.tensor([prefix + pairs.clean[i] for i in idx], device=device)
        corrupt = torch.tensor([prefix + pairs.corrupt[i] for i in idx], device=device)
        metric = logit_diff([pairs.answer_ids[i] for i in idx], [pairs.foil_ids[i] for i in idx])
        yield idx, clean, corrupt, metric


def faithfulness(runner: ConditionRunner, conditions: dict[str, Condition],
                 maps: dict[str, ScoreMap], pairs: PairSet, sizes: Sequence[int]) -> dict:
    """Share of the clean-corrupt gap recovered by patching the top-n components of a circuit
    (heads and MLPs by absolute score), in its own condition and crossed: the ICL circuit in
    ft-zs and the FT circuit in base-icl."""
    total = next(iter(maps.values())).flat.numel()
    sizes = sorted({s for s in sizes if s <= total})
    runs = {name: (name, name) for name in ("base-zs", "base-icl", "ft-zs")}
    runs.update({"icl-circuit@ft-zs": ("ft-zs", "base-icl"),
                 "ft-circuit@base-icl": ("base-icl", "ft-zs")})
    curves = {}
    for label, (where, circuit) in runs.items():
        sets = [components(maps[circuit], top_k(maps[circuit], s)) for s in sizes]
        num, den = torch.zeros(len(sizes)), 0.0
        with runner.use(conditions[where]) as model:
            for _, clean, corrupt, metric in _pair_batches(runner, conditions[where], pairs):
                start = min(first_difference(clean, corrupt), clean.shape[1] - 1)
                values, top = set_values(model, clean, start, metric)
                runs = stacked_sets(model, corrupt, [((), ())] + sets, values, metric, start)
                base, patched = runs[0], runs[1:]
                num += (patched - base).sum(-1)
                den += float((top - base).sum())
        curves[label] = {"sizes": sizes, "recovered": (num / den).tolist() if abs(den) > 1e-9
                         else [None] * len(sizes)}
    return curves


@torch.no_grad()
def logit_lens(runner: ConditionRunner, config: ShiftConfig, conditions: dict[str, Condition],
               n: int = 16) -> dict:
    """Per condition, shortcut and layer: the mean log-rank of the shortcut's answer minus that
    of the computed answer at the last token of control queries where they differ (below 0 =
    the layer favours that shortcut)."""
    family = get_task(config.task)
    pool = generate(config.task, 4 * n, seed=config.seed, pattern=False, **config.knobs)
    tok = runner.model.tokenizer
    sep = answer_sep(config.task)
    out: dict = {}
    for short in family.shortcuts(pool[0]):
        queries = [q for q in pool if q.meta["shortcuts"][short] != q.target][:n]
        if not queries:
            continue
        out[short] = {}
        for name in ("base-zs", "base-icl", "ft-zs"):
            cond = conditions[name]
            prefix = runner.prefix(cond)
            ids = [encode(tok, q.input, first=False) for q in queries]
            gaps = []
            with runner.use(cond) as model:
                for idx in length_groups(ids).values():
                    resid = _last_resid(model, prefix, [ids[i] for i in idx])
                    logits = unembed(model.hf, resid.to(model.dtype)).float()   # [b, L, V]
                    for j, i in enumerate(idx):
                        s = first_answer_token(tok, sep + queries[i].meta["shortcuts"][short])
                        r = first_answer_token(tok, sep + queries[i].target)
                        gaps.append(torch.log1p(_rank(logits[j], s))
                                    - torch.log1p(_rank(logits[j], r)))
            out[short][name] = torch.stack(gaps).mean(0).tolist()
    return out


def _rank(logits: torch.Tensor, token: int) -> torch.Tensor:
    """Rank of ``token`` (0 = top) in each row of ``logits`` ``[..., vocab]``."""
    return (logits > logits[..., token:token + 1]).sum(-1).float()


def _last_resid(model, prefix: list[int], suffixes: list[list[int]]) -> torch.Tensor:
    """The residual stream after every layer at the last token: ``[batch, layer, d_model]``."""
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    store, hooks = capture(names, lambda act: act[:, -1].detach())
    ids = torch.tensor(suffixes, device=model.device)
    past = repeat_cache(prefix_cache(model, torch.tensor([prefix], device=model.device)),
                        len(suffixes))
    forward(model, ids, past, hooks)
    return torch.stack([store[n] for n in names], 1)


@torch.no_grad()
def attention_views(runner: ConditionRunner, conditions: dict[str, Condition],
                    maps: dict[str, ScoreMap], pairs: PairSet, n_heads: int = 4,
                    last: int = 40) -> dict:
    """Attention of the top heads of the ICL and FT circuits on the first clean pair prompt of
    each condition (its last ``last`` tokens), for circuitsvis views."""
    ranked = maps["base-icl"].top_heads(n_heads) + maps["ft-zs"].top_heads(n_heads)
    heads = list(dict.fromkeys(ranked))[:n_heads]
    pattern = COMPONENT_KINDS["heads"].hook_name
    names = {pattern(l).replace("hook_z", "hook_pattern") for l, _ in heads}
    views = {}
    for name in ("base-zs", "base-icl", "ft-zs"):
        cond = conditions[name]
        tokens = torch.tensor([runner.prefix(cond) + pairs.clean[0]], device=runner.model.device)
        with runner.use(cond) as model:
            _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
        att = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, h, -last:, -last:]
                           for l, h in heads])
        ids = tokens[0, -last:].tolist()
        views[name] = {"tokens": [runner.model.tokenizer.decode([i]) for i in ids],
                       "attention": [[[round(float(x), 4) for x in row] for row in a]
                                     for a in att],
                       "heads": [head_name(l, h) for l, h in heads]}
    return views


def icl_heads(runner: ConditionRunner, config: ShiftConfig, condition: Condition,
              maps: dict[str, ScoreMap]) -> dict:
    """Function-vector ICL heads of the base model on the run's demonstrations, how many of them
    each circuit uses, and the function vector's zero-shot injection accuracy."""
    if not get_task(config.task).choices:
        return {"skipped": f"{config.task} has open answers; ICL heads need a closed answer set"}
    if len(condition.demos) < 2:
        return {"skipped": "ICL heads need at least 2 demonstrations"}
    model = runner.model
    heads = find_icl_heads(model, config.task, n=max(4, config.n_pairs // 2), seed=config.seed,
                           demos=condition.demos)
    k = max(config.ks)
    return {**heads.to_dict(k), **circuit_usage(heads, maps, k), "aie": heads.aie.tolist(),
            "injection": inject(model, config.task, function_vector(model, heads, k),
                                n=config.n_eval, seed=config.seed)}
