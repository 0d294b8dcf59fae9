"""ICL heads by the function-vector method (Todd et al., 2024).

Each head's mean output at the last token of clean ICL prompts is patched, one head at a time,
into the last token of the same prompts with the demonstration labels shuffled; a head's
*average indirect effect* (AIE) is the mean rise in the probability of the correct answer. The
*function vector* is the sum of the top heads' mean outputs in the residual stream; added to the
residual stream of zero-shot prompts, it should restore some of what the demonstrations give.

Everything runs on :func:`interp.analysis.patching.patch_sweep`: the shuffled prompts' positions
before the last token are computed once and reach every patched copy through the KV cache, so a
sweep over all heads costs about one token per head and prompt.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from interp.analysis.components import head_name, hook_names, resid_hook
from interp.analysis.metrics import answer_prob, first_answer_token
from interp.analysis.patching import patch_sweep, run_metric
from interp.arch import w_o
from interp.engine import common_prefix, forward, length_groups, prefix_cache
from interp.errors import ConfigError
from interp.models import LoadedModel
from interp.names import top_heads
from interp.prompts import answer_sep, build_prompt, choose_demos
from interp.results import Result
from interp.stats import bootstrap_ci
from interp.tasks import Example, generate, get_task


@dataclass
class ICLHeads(Result):
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
    demo_ids: list[str] | None = None

    file_stem = "icl_heads"

    def top_heads(self, k: int = 10) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest absolute AIE, as (layer, head), largest first."""
        return top_heads(self.aie, k)

    def to_frame(self):
        import pandas as pd

        low, high = bootstrap_ci(self.per_prompt - self.shuffled)
        L, H = self.aie.shape
        return pd.DataFrame([{"component": head_name(l, h), "layer": l, "head": h,
                              "value": float(self.aie[l, h]), "ci_low": float(low[l, h]),
                              "ci_high": float(high[l, h])}
                             for l in range(L) for h in range(H)])

    def to_dict(self, k: int = 10) -> dict:
        return {"task": self.task, "shots": self.shots, "n": int(self.clean.numel()),
                "clean_prob": float(self.clean.mean()),
                "shuffled_prob": float(self.shuffled.mean()), "demo_ids": self.demo_ids,
                "top": [{"head": head_name(l, h), "layer": l, "index": h,
                         "aie": round(float(self.aie[l, h]), 5)} for l, h in self.top_heads(k)]}

    def _tensors(self):
        return {"aie": self.aie, "per_prompt": self.per_prompt, "clean": self.clean,
                "shuffled": self.shuffled, "mean_z": self.mean_z}

    def _meta(self):
        return {"task": self.task, "shots": self.shots, "demo_ids": self.demo_ids}

    @classmethod
    def _from(cls, tensors, meta):
        return cls(tensors["aie"], tensors["per_prompt"], tensors["clean"], tensors["shuffled"],
                   tensors["mean_z"], meta["task"], meta["shots"], meta.get("demo_ids"))


def shuffled_labels(demos: list[Example], rng: random.Random) -> list[Example]:
    """The demonstrations with their labels permuted so that, where the labels allow, at least
    one of them moves (the function-vector corruption)."""
    labels = [d.target for d in demos]
    for _ in range(20):
        rng.shuffle(labels)
        if labels != [d.target for d in demos]:
            break
    return [dataclasses.replace(d, target=t) for d, t in zip(demos, labels)]


def icl_prompts(task: str, n: int, shots: int, seed: int = 0, header: bool | str = True,
                demos: list[Example] | None = None
                ) -> tuple[list[str], list[str], list[Example], list[Example]]:
    """``n`` clean k-shot prompts, the same prompts with the demonstration labels shuffled,
    their queries and the demonstrations. All prompts share one demonstration set (``demos``,
    default :func:`~interp.prompts.choose_demos`) and one shuffle of its labels."""
    if not get_task(task).choices:
        raise ConfigError(f"task {task!r} has open answers; ICL heads need a closed answer set")
    demos = list(demos) if demos is not None else choose_demos(task, shots, seed=seed)
    if len(demos) < 2:
        raise ConfigError("shuffling demonstration labels needs at least 2 shots")
    rng = random.Random(f"icl-heads|{task}|{seed}")
    queries = generate(task, n, seed=seed, split="test", pattern=True)
    wrong = shuffled_labels(demos, rng)   # one shuffle for every prompt: one shared prefix
    clean = [build_prompt(q, demos, header).text for q in queries]
    shuffled = [build_prompt(q, wrong, header).text for q in queries]
    return clean, shuffled, queries, demos


@torch.no_grad()
def find_icl_heads(model: LoadedModel, task: str, n: int = 16, shots: int = 4, seed: int = 0,
                   demos: list[Example] | None = None, chunk: int | None = None,
                   progress: bool = False) -> ICLHeads:
    """Every head's average indirect effect on P(correct answer) (see the module docstring)."""
    bridge, tok, L = model.bridge, model.tokenizer, model.n_layers
    clean, shuffled, queries, demos = icl_prompts(task, n, shots, seed, demos=demos)
    answers = [first_answer_token(tok, answer_sep(task) + q.target) for q in queries]
    names = hook_names(L, ("heads",))
    clean_tok = [bridge.to_tokens(t)[0] for t in clean]
    total = torch.zeros(L, model.n_heads, model.d_head)
    clean_p = torch.zeros(n)
    for idx in length_groups(clean_tok).values():
        batch = torch.stack([clean_tok[i] for i in idx]).to(model.device)
        shared = min(common_prefix(batch), batch.shape[1] - 1)
        store: dict[str, torch.Tensor] = {}

        def keep(name):
            def fn(act, hook=None):
                store[name] = act[:, -1].detach()
            return fn
        logits = forward(model, batch[:, shared:], prefix_cache(model, batch[:, :shared])
                         if shared else None, [(name, keep(name)) for name in names])
        total += torch.stack([store[name].sum(0).float().cpu() for name in names])
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
        per_prompt[..., idx] = patch_sweep(model, batch, sources, metric, "heads", chunk,
                                     start=T - 1, progress=progress)
    aie = (per_prompt - shuffled_p).mean(-1)
    return ICLHeads(aie, per_prompt, clean_p, shuffled_p, mean_z, task, len(demos),
                    [d.id for d in demos])


def function_vector(model: LoadedModel, heads: ICLHeads, k: int = 10) -> torch.Tensor:
    """Sum over the top-``k`` heads of their mean output written into the residual stream
    (mean ``z`` through that head's slice of the output projection): ``[d_model]``."""
    fv = torch.zeros(model.d_model)
    for l, h in heads.top_heads(k):
        fv += w_o(model.hf, l)[:, h].detach().float().cpu() @ heads.mean_z[l, h]
    return fv


@torch.no_grad()
def inject(model: LoadedModel, task: str, fv: torch.Tensor, layer: int | None = None,
           n: int = 32, seed: int = 0, scale: float = 1.0) -> dict:
    """Zero-shot accuracy (choice with the highest first-token logit) without and with
    ``scale * fv`` added to the residual stream entering ``layer`` (default: a third of the way
    up) at the last token."""
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
            hooks = [(resid_hook(layer), steer)] if with_fv else []
            logits = bridge.run_with_hooks(batch, fwd_hooks=hooks)
            picked[with_fv][idx] = logits[:, -1, choices].argmax(-1).cpu()
    return {"layer": layer, "n": n, "scale": scale,
            "zero_shot": float((picked[False] == gold).float().mean()),
            "with_function_vector": float((picked[True] == gold).float().mean())}


def circuit_usage(heads: ICLHeads, maps: dict, k: int) -> dict:
    """How many of the top-``k`` ICL heads each condition's circuit (its top-``k`` heads by
    absolute effect) contains; ``maps`` are :class:`~interp.circuits.ScoreMap` by condition."""
    icl = heads.top_heads(k)
    out = {"k": k, "icl_heads": [head_name(l, h) for l, h in icl], "conditions": {}}
    for cond, m in maps.items():
        top = set(m.top_heads(k))
        shared = [head_name(l, h) for l, h in icl if (l, h) in top]
        out["conditions"][cond] = {"shared": shared, "count": len(shared)}
    return out
