"""ICL heads by the function-vector method (Todd et al., 2024).

Each head's mean output at the last token of clean ICL prompts is patched, one head at a time,
into the last token of the same prompts with the demonstration labels shuffled; a head's
*average indirect effect* (AIE) is the mean rise in the probability of the correct answer. The
*function vector* is the sum of the top heads' mean outputs in the residual stream; added to the
residual stream of zero-shot prompts, it should restore some of what the demonstrations give.

Everything runs on :func:`interp.analysis.patching.sweep`: the shuffled prompts' positions
before the last token are computed once and reach every patched copy through the KV cache, so a
sweep over all heads costs about one token per head and prompt.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from interp.errors import ConfigError
from interp.models import LoadedModel, plain_name
from interp.tasks import Example


@dataclass
class ICLHeads:
    """``aie [layer, head]``; ``per_prompt [layer, head, n]`` the patched P(correct);
    ``clean``/``shuffled [n]`` P(correct) on the unpatched prompts; ``mean_z [layer, head,
    d_head]`` the heads' mean last-token output over the clean prompts."""

    aie: torch.Tensor
    per_prompt: torch.Tensor
    clean: torch.Tensor
    shuffled: torch.Tensor
    mean_z: torch.Tensor
    task: str = ""
    shots: int = 0

    def top(self, k: int = 10) -> list[tuple[int, int]]:
        H = self.aie.shape[1]
        return [divmod(int(i), H) for i in self.aie.flatten().argsort(descending=True)[:k]]

    def to_dict(self, k: int = 10) -> dict:
        return {"task": self.task, "shots": self.shots, "n": int(self.clean.numel()),
                "clean_prob": float(self.clean.mean()),
                "shuffled_prob": float(self.shuffled.mean()),
                "top": [{"head": f"L{l}H{h}", "layer": l, "index": h,
                         "aie": round(float(self.aie[l, h]), 5)} for l, h in self.top(k)]}


def icl_prompts(task: str, n: int, shots: int, seed: int = 0,
                header: bool | str = True) -> tuple[list[str], list[str], list[Example]]:
    """``n`` clean k-shot prompts, the same prompts with the demonstration labels shuffled, and
    their queries. Each prompt draws its own demonstrations; a shuffle always moves a label."""
    from interp.prompts import build_prompt, demo_pool, sample_demos
    from interp.tasks import generate, get_task

    if shots < 2:
        raise ConfigError("shuffling demonstration labels needs at least 2 shots")
    if not get_task(task).choices:
        raise ConfigError(f"task {task!r} has open answers; ICL heads need a closed answer set")
    rng = random.Random(f"icl-heads|{task}|{seed}")
    pool = demo_pool(task, max(64, 4 * shots), seed=seed)
    queries = generate(task, n, seed=seed, split="test", pattern=True)
    clean, shuffled = [], []
    for i, q in enumerate(queries):
        demos = sample_demos(pool, shots, seed=seed * 100_003 + i)
        labels = [d.target for d in demos]
        for _ in range(20):
            rng.shuffle(labels)
            if labels != [d.target for d in demos]:
                break
        wrong = [dataclasses.replace(d, target=t) for d, t in zip(demos, labels)]
        clean.append(build_prompt(q, demos, header).text)
        shuffled.append(build_prompt(q, wrong, header).text)
    return clean, shuffled, queries


@torch.no_grad()
def find_icl_heads(model: LoadedModel, task: str, n: int = 16, shots: int = 4, seed: int = 0,
                   chunk: int | None = None, progress: bool = False) -> ICLHeads:
    """Every head's average indirect effect on P(correct answer) (see the module docstring)."""
    from interp.analysis.metrics import answer_prob, first_answer_token
    from interp.analysis.patching import COMPONENTS, length_groups, run_metric, sweep
    from interp.prompts import answer_sep

    bridge, tok, L = model.bridge, model.tokenizer, model.n_layers
    clean, shuffled, queries = icl_prompts(task, n, shots, seed)
    answers = [first_answer_token(tok, answer_sep(task) + q.target) for q in queries]
    hook = COMPONENTS["heads"]
    names = [hook.format(l) for l in range(L)]
    clean_tok = [bridge.to_tokens(t)[0] for t in clean]
    total = torch.zeros(L, model.n_heads, model.d_head)
    clean_p = torch.zeros(n)
    for idx in length_groups(clean_tok).values():
        batch = torch.stack([clean_tok[i] for i in idx]).to(model.device)
        logits, cache = bridge.run_with_cache(batch, names_filter=lambda x: x in names)
        total += torch.stack([cache[name][:, -1].sum(0).float().cpu() for name in names])
        clean_p[idx] = answer_prob([answers[i] for i in idx])(logits).cpu()
    mean_z = total / n
    shuffled_tok = [bridge.to_tokens(t)[0] for t in shuffled]
    per_prompt = torch.zeros(L, model.n_heads, n)
    shuffled_p = torch.zeros(n)
    for idx in length_groups(shuffled_tok).values():
        batch = torch.stack([shuffled_tok[i] for i in idx]).to(model.device)
        B, T = batch.shape
        metric = answer_prob([answers[i] for i in idx])
        sources = {name: mean_z[l].to(model.device, model.dtype)[None, None].expand(
            B, T, -1, -1) for l, name in enumerate(names)}
        shuffled_p[idx] = run_metric(model, batch, metric)
        per_prompt[..., idx] = sweep(model, batch, sources, metric, "heads", chunk,
                                     start=T - 1, progress=progress)
    aie = (per_prompt - shuffled_p).mean(-1)
    return ICLHeads(aie, per_prompt, clean_p, shuffled_p, mean_z, task, shots)


def _o_proj(model: LoadedModel, layer: int) -> torch.Tensor:
    for name, p in model.hf.named_parameters():
        name = plain_name(name)
        if f"layers.{layer}." in name and "o_proj.weight" in name:
            return p.detach()
    raise ConfigError("this model has no o_proj weights to build a function vector from")


def function_vector(model: LoadedModel, heads: ICLHeads, k: int = 10) -> torch.Tensor:
    """Sum over the top-``k`` heads of their mean output written into the residual stream
    (mean ``z`` through that head's slice of the output projection): ``[d_model]``."""
    d = model.d_head
    fv = torch.zeros(model.d_model)
    for l, h in heads.top(k):
        w = _o_proj(model, l)[:, h * d:(h + 1) * d].float().cpu()
        fv += w @ heads.mean_z[l, h]
    return fv


@torch.no_grad()
def inject(model: LoadedModel, task: str, fv: torch.Tensor, layer: int | None = None,
           n: int = 32, seed: int = 0, scale: float = 1.0) -> dict:
    """Zero-shot accuracy (choice with the highest first-token logit) without and with
    ``scale * fv`` added to the residual stream entering ``layer`` (default: a third of the way
    up) at the last token."""
    from interp.analysis.metrics import first_answer_token
    from interp.analysis.patching import length_groups
    from interp.prompts import answer_sep, build_prompt
    from interp.tasks import generate

    bridge, tok = model.bridge, model.tokenizer
    layer = model.n_layers // 3 if layer is None else layer
    if not 0 <= layer < model.n_layers:
        raise ConfigError(f"layer must be in 0..{model.n_layers - 1}, got {layer}")
    queries = generate(task, n, seed=seed, split="test", pattern=True)
    sep = answer_sep(task)
    choices = [first_answer_token(tok, sep + c) for c in queries[0].choices]
    gold = torch.tensor([queries[0].choices.index(q.target) for q in queries])
    tokens = [bridge.to_tokens(build_prompt(q, (), True).text)[0] for q in queries]
    add = (scale * fv).to(model.device, model.dtype)

    def steer(act, hook=None):
        act = act.clone()
        act[:, -1] += add
        return act

    picked = {False: torch.zeros(n, dtype=torch.long), True: torch.zeros(n, dtype=torch.long)}
    for idx in length_groups(tokens).values():
        batch = torch.stack([tokens[i] for i in idx]).to(model.device)
        for with_fv in (False, True):
            hooks = [(f"blocks.{layer}.hook_resid_pre", steer)] if with_fv else []
            logits = bridge.run_with_hooks(batch, fwd_hooks=hooks)
            picked[with_fv][idx] = logits[:, -1, choices].argmax(-1).cpu()
    return {"layer": layer, "n": n, "scale": scale,
            "zero_shot": float((picked[False] == gold).float().mean()),
            "with_function_vector": float((picked[True] == gold).float().mean())}


def circuit_usage(heads: ICLHeads, maps: dict, k: int) -> dict:
    """How many of the top-``k`` ICL heads each condition's circuit (its top-``k`` heads by
    absolute effect) contains; ``maps`` are :class:`~interp.circuits.ScoreMap` by condition."""
    icl = heads.top(k)
    out = {"k": k, "icl_heads": [f"L{l}H{h}" for l, h in icl], "conditions": {}}
    for cond, m in maps.items():
        top = set(m.top_heads(k))
        shared = [f"L{l}H{h}" for l, h in icl if (l, h) in top]
        out["conditions"][cond] = {"shared": shared, "count": len(shared)}
    return out
