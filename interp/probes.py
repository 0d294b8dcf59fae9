"""Probes of the circuit-shift experiment beyond the component scores: logit lens on control
queries, attention of the top heads, and the function-vector ICL heads each circuit uses."""

from __future__ import annotations

import torch

from interp.circuits import ScoreMap
from interp.pipeline import CONDITIONS, ShiftConfig, _load, condition_pairs, demos_for


def shortcut_answer(ex) -> str | None:
    """What the implicit pattern would answer on a control query (where it is wrong)."""
    meta = ex.meta
    if ex.task == "expression":
        return str(sum(meta["s"]))
    if ex.task == "parity":
        return "odd" if sum(meta["bits"][i] for i in meta["subset"]) % 2 else "even"
    if ex.task == "boolean":
        return "True" if ex.input.rstrip().split("\n")[0].endswith("True") else "False"
    if ex.task == "relation":
        return "True"
    return None


@torch.no_grad()
def logit_lens(config: ShiftConfig, ft_spec: str, n: int = 16) -> dict:
    """Per condition and layer, the mean log-rank of the shortcut answer minus that of the
    computed answer on control queries: below 0 = the layer favours the shortcut."""
    from interp.analysis.metrics import first_answer_token
    from interp.prompts import answer_sep, build_prompt
    from interp.tasks import generate

    queries = [q for q in generate(config.task, 4 * n, seed=config.seed, pattern=False)
               if shortcut_answer(q) not in (None, q.target)][:n]
    if not queries:
        return {}
    demos = demos_for(config)
    out = {}
    for cond in CONDITIONS:
        model = _load(config, ft_spec if cond == "ft-zs" else config.model)
        bridge, tok = model.bridge, model.tokenizer
        sep = answer_sep(config.task)
        gaps = []
        for q in queries:
            prompt = build_prompt(q, demos if cond == "base-icl" else (), True).text
            _, cache = bridge.run_with_cache(bridge.to_tokens(prompt),
                                             names_filter=lambda n: n.endswith("hook_resid_post"))
            resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][0, -1]
                                 for l in range(model.n_layers)])
            logits = bridge.unembed(bridge.ln_final(resid[:, None]))[:, 0]
            ranks = logits.argsort(-1, descending=True).argsort(-1)
            short = first_answer_token(tok, sep + shortcut_answer(q))
            right = first_answer_token(tok, sep + q.target)
            gaps.append(torch.log1p(ranks[:, short].float()) - torch.log1p(ranks[:, right].float()))
        out[cond] = torch.stack(gaps).mean(0).tolist()
    return out


@torch.no_grad()
def attention_views(config: ShiftConfig, ft_spec: str, maps: dict[str, ScoreMap],
                    n_heads: int = 4, last: int = 40) -> dict:
    """Attention patterns of the top heads of the ICL and FT circuits on one clean prompt per
    condition (its last ``last`` tokens), for the report's circuitsvis views."""
    ranked = maps["base-icl"].top_heads(n_heads) + maps["ft-zs"].top_heads(n_heads)
    heads = list(dict.fromkeys(ranked))[:n_heads]
    views = {}
    for cond in CONDITIONS:
        model = _load(config, ft_spec if cond == "ft-zs" else config.model)
        pair = condition_pairs(config, model.tokenizer, icl=cond == "base-icl")[0]
        tokens = model.bridge.to_tokens(pair["clean"])
        names = {f"blocks.{l}.attn.hook_pattern" for l, _ in heads}
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
        att = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, h, -last:, -last:]
                           for l, h in heads])
        ids = tokens[0, -last:].tolist()
        views[cond] = {"tokens": [model.tokenizer.decode([i]) for i in ids],
                       "attention": [[[round(float(x), 4) for x in row] for row in a]
                                     for a in att],
                       "heads": [f"L{l}H{h}" for l, h in heads]}
    return views


def icl_heads_stage(config: ShiftConfig, ft_spec: str, maps: dict[str, ScoreMap]) -> dict:
    """Function-vector ICL heads of the base model, how many of them each circuit uses, and the
    function vector's zero-shot injection accuracy (closed-answer tasks only)."""
    from interp.analysis.icl_heads import circuit_usage, find_icl_heads, function_vector, inject
    from interp.tasks import get_task

    if not get_task(config.task).choices:
        return {"skipped": f"{config.task} has open answers; ICL heads need a closed answer set"}
    model = _load(config, config.model)
    heads = find_icl_heads(model, config.task, n=config.n_pairs, shots=max(2, config.shots),
                           seed=config.seed)
    k = max(config.ks)
    return {**heads.to_dict(k), **circuit_usage(heads, maps, k),
            "aie": heads.aie.tolist(),
            "injection": inject(model, config.task, function_vector(model, heads, k),
                                n=config.n_eval, seed=config.seed)}
