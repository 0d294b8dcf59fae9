"""Does the shift carry the gain? Causal tests of the most shifted components.

Components are chosen on one half of the counterfactual pairs (the k with the largest
|score_icl - score_zs|, or |score_ft - score_zs| for fine-tuning) and tested on the other half
of the pairs and on pattern test queries, beside random sets of k components matched to the
chosen set's |score| deciles (in the condition they are tested in). Interventions act on the
final token (where the answer is read), so every set costs one token per prompt behind the
prompt's KV cache.

- **Necessity**: mean-ablate the set (each condition's own mean final-token activation) in
  base-icl; the share of ICL's gain over base-zs it removes (logit difference on pairs;
  accuracy on queries). Mirror: the FT set ablated in ft-zs, share of FT's gain removed.
- **Sufficiency**: patch the set's final-token outputs from base-icl into base-zs (same query,
  no demonstrations), and from ft-zs into the base model (cross-model); share of the gain
  recovered.
- **Cross-condition**: the ICL set ablated in ft-zs (share of FT's gain removed) and the FT set
  in base-icl.

Each reports the chosen set's share minus the random sets' mean share, with a bootstrap interval
over test prompts, and the chosen set's percentile among the random sets. A test whose gain
interval does not lie above 0 is ``moot`` (nothing to explain).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import torch

from interp.analysis.components import hook_names
from interp.analysis.metrics import first_answer_token, logit_diff
from interp.analysis.patching import auto_chunk, stacked_sets
from interp.circuits import ScoreMap, components
from interp.engine import capture, encode, forward, length_groups
from interp.prompts import answer_sep
from interp.shift.conditions import Condition, PairSet
from interp.shift.config import ShiftConfig
from interp.shift.measure import ConditionRunner, flatten
from interp.stats import percentile_ci, resample_weights
from interp.tasks import Example, get_task


class Prompts:
    """Test prompts (query tokens without prefix) and how to score each: logit difference of a
    pair's answer and foil, or correctness of a query (closed sets: the gold choice has the
    highest first-token logit; open answers: the gold's first token is the top token)."""

    def __init__(self, config: ShiftConfig, tokenizer, pairs: PairSet, queries: Sequence[Example]):
        sep = answer_sep(config.task)
        choices = get_task(config.task).choices
        self.ids = list(pairs.clean) + [encode(tokenizer, q.input, first=False) for q in queries]
        self.n_pairs = len(pairs)
        self.answer = list(pairs.answer_ids) + [first_answer_token(tokenizer, sep + q.target)
                                                for q in queries]
        self.foil = list(pairs.foil_ids) + [0] * len(queries)
        self.choice_ids = [first_answer_token(tokenizer, sep + c) for c in choices] \
            if choices else None

    def metric(self, idx: Sequence[int]):
        """Per prompt of ``idx``: the logit difference (pairs) or 1/0 correctness (queries)."""
        ans = torch.tensor([self.answer[i] for i in idx])
        foil = torch.tensor([self.foil[i] for i in idx])
        is_pair = torch.tensor([i < self.n_pairs for i in idx])
        diff = logit_diff(ans, foil)
        choice = torch.tensor(self.choice_ids) if self.choice_ids else None

        def fn(logits: torch.Tensor) -> torch.Tensor:
            last = logits[:, -1].float()
            rows = torch.arange(last.shape[0], device=last.device)
            if choice is not None:
                correct = last[:, choice.to(last.device)].argmax(-1) == torch.tensor(
                    [self.choice_ids.index(a) if a in self.choice_ids else -1
                     for a in ans.tolist()], device=last.device)
            else:
                correct = last.argmax(-1) == ans.to(last.device)
            return torch.where(is_pair.to(last.device), diff(logits), correct.float()[rows])
        return fn


def final_values(runner: ConditionRunner, cond: Condition, prompts: Prompts
                 ) -> dict[str, torch.Tensor]:
    """Final-token ``hook_z`` of every head and output of every MLP, per prompt ``[n, ...]``."""
    model = runner.model
    names = hook_names(model.n_layers)
    prefix = runner.prefix(cond)
    out: dict[str, torch.Tensor] = {}
    with runner.use(cond), torch.no_grad():
        for idx in length_groups(prompts.ids).values():
            tokens = torch.tensor([prefix + prompts.ids[i] for i in idx], device=model.device)
            store, hooks = capture(names, lambda act: act[:, -1].detach())
            forward(model, tokens, hooks=hooks)
            for name in names:
                if name not in out:
                    out[name] = torch.zeros(len(prompts.ids), *store[name].shape[1:],
                                            dtype=store[name].dtype, device=store[name].device)
                out[name][idx] = store[name]
    return out


def run_sets(runner: ConditionRunner, cond: Condition, prompts: Prompts, sets,
             values: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Per set and prompt, the prompt's score with the set's components set to ``values`` (per
    prompt ``[n, ...]`` or one mean ``[1, ...]``) at the final token: ``[n_sets, n]``. The first
    row of the result is the unintervened run when ``sets[0]`` is empty."""
    model = runner.model
    prefix = runner.prefix(cond)
    out = torch.zeros(len(sets), len(prompts.ids))
    with runner.use(cond):
        for idx in length_groups(prompts.ids).values():
            tokens = torch.tensor([prefix + prompts.ids[i] for i in idx], device=model.device)
            T = tokens.shape[1]
            vals = {} if values is None else {
                k: (v[idx] if v.shape[0] > 1 else v)[:, None] for k, v in values.items()}
            chunk = max(1, auto_chunk(model, len(idx), 1, T - 1))
            out[:, idx] = stacked_sets(model, tokens, sets, vals, prompts.metric(idx), T - 1,
                                       chunk)
    return out


def matched_random_sets(importance: torch.Tensor, chosen: Sequence[int], n_sets: int,
                        seed: int = 0) -> list[list[int]]:
    """Random sets of ``len(chosen)`` components, each chosen component replaced by a random one
    of the same |importance| decile (distinct within a set)."""
    order = importance.abs().argsort()
    decile = torch.empty_like(order)
    decile[order] = (torch.arange(len(order)) * 10) // len(order)
    pools = {d: (decile == d).nonzero().flatten().tolist() for d in range(10)}
    rng = random.Random(f"matched|{seed}")
    out = []
    for _ in range(n_sets):
        picked: list[int] = []
        for c in chosen:
            pool = [i for i in pools[int(decile[c])] if i not in picked] or \
                [i for i in range(len(order)) if i not in picked]
            picked.append(rng.choice(pool))
        out.append(picked)
    return out


def share_test(base: torch.Tensor, reference: torch.Tensor, runs: torch.Tensor, sign: float,
               mask: torch.Tensor, n_boot: int, seed: int) -> dict:
    """Shares of the gain (reference - base, averaged over prompts in ``mask``) that each set
    removes (``sign`` -1: reference - run) or recovers (+1: run - base); ``runs[0]`` is the
    chosen set, the rest random sets. Returns the chosen share minus the random mean, its
    bootstrap interval over prompts, the chosen set's percentile among the random ones, and the
    gain with its interval (``moot`` when the gain interval does not lie above 0)."""
    idx = mask.nonzero().flatten()
    if len(idx) == 0:
        return {"estimate": None, "ci95": None, "reason": "no prompts of this kind"}
    b, r, x = base[idx].double(), reference[idx].double(), runs[:, idx].double()
    w = resample_weights(len(idx), n_boot, seed)                    # [n_boot, m]
    gain, gain_boot = float((r - b).mean()), (r - b) @ w.T
    effect = (r[None] - x) if sign < 0 else (x - b[None])           # [sets, m]
    shares = effect.mean(-1) / gain if gain else effect.mean(-1) * float("nan")
    boot = (effect @ w.T) / gain_boot[None]                          # [sets, n_boot]
    diff_boot = boot[0] - boot[1:].mean(0)
    low, high = percentile_ci(diff_boot[torch.isfinite(diff_boot)]) if torch.isfinite(
        diff_boot).any() else (torch.tensor(float("nan")),) * 2
    glow, ghigh = percentile_ci(gain_boot)
    moot = not float(glow) > 0
    est = float(shares[0] - shares[1:].mean())
    return {"estimate": None if moot else est,
            "ci95": None if moot else [float(low), float(high)],
            "chosen_share": float(shares[0]), "random_mean_share": float(shares[1:].mean()),
            "percentile": float((shares[1:] < shares[0]).double().mean()),
            "gain": {"estimate": gain, "ci95": [float(glow), float(ghigh)]},
            "moot": moot, "reason": "no gain over base-zs to explain" if moot else None,
            "n_prompts": len(idx)}


def causal_tests(runner: ConditionRunner, config: ShiftConfig, conds: dict[str, Condition],
                 scores: dict, pair_sets: dict[str, PairSet], queries: dict) -> dict:
    n = config.n_pairs
    half = n // 2
    k = max(config.ks)
    sel = slice(0, half)
    maps = {name: flatten(scores[f"{name}/0"]["counterfactual"])[:, sel].mean(-1)
            for name in ("base-zs", "base-icl", "ft-zs")}
    chosen = {"icl": (maps["base-icl"] - maps["base-zs"]).abs().argsort(descending=True)[:k],
              "ft": (maps["ft-zs"] - maps["base-zs"]).abs().argsort(descending=True)[:k]}
    heads_map = scores["base-zs/0"]["counterfactual"]["heads"]
    L, H = heads_map.shape[:2]
    template = ComponentIndex(L, H)
    test_pairs = pair_sets["counterfactual"].subset(range(half, n))
    prompts = Prompts(config, runner.model.tokenizer, test_pairs,
                      queries["pattern"][: min(config.n_eval, 32)])
    is_pair = torch.arange(len(prompts.ids)) < prompts.n_pairs
    masks = {"logit_diff": is_pair, "accuracy": ~is_pair}
    random_for = {}
    for arm, where in (("icl", "base-icl"), ("ft", "ft-zs")):
        random_for[arm] = matched_random_sets(maps[where], chosen[arm].tolist(),
                                              config.n_random_sets, config.seed + len(arm))
    plain = {name: run_sets(runner, conds[name], prompts, [((), ())], None)[0]
             for name in ("base-zs", "base-icl", "ft-zs")}
    means = {name: {h: v.mean(0, keepdim=True) for h, v in
                    final_values(runner, conds[name], prompts).items()}
             for name in ("base-icl", "ft-zs")}
    # sources of the sufficiency tests: the same query's final token with demonstrations
    # (base-icl), and in the fine-tuned model (ft-zs: cross-model patching into base-zs)
    sources = {name: final_values(runner, conds[name], prompts) for name in ("base-icl", "ft-zs")}

    def sets_of(arm):
        return [template.split([int(i) for i in chosen[arm]])] + [
            template.split(s) for s in random_for[arm]]

    out = {"k": k, "selection_pairs": half, "test_pairs": n - half,
           "test_queries": int((~is_pair).sum()), "random_sets": config.n_random_sets,
           "chosen": {arm: [template.name(int(i)) for i in chosen[arm]] for arm in chosen}}
    plan = {
        "necessity_icl": CausalTest("icl", "base-icl", means["base-icl"], "base-zs", "base-icl"),
        "necessity_ft": CausalTest("ft", "ft-zs", means["ft-zs"], "base-zs", "ft-zs"),
        "sufficiency_icl": CausalTest("icl", "base-zs", sources["base-icl"], "base-zs",
                                      "base-icl", sign=1),
        "sufficiency_ft": CausalTest("ft", "base-zs", sources["ft-zs"], "base-zs", "ft-zs",
                                     sign=1),
        "icl_circuit_in_ft": CausalTest("icl", "ft-zs", means["ft-zs"], "base-zs", "ft-zs"),
        "ft_circuit_in_icl": CausalTest("ft", "base-icl", means["base-icl"], "base-zs",
                                        "base-icl"),
    }
    for name, test in plan.items():
        runs = run_sets(runner, conds[test.run_in], prompts, sets_of(test.arm), test.values)
        out[name] = {metric: share_test(plain[test.low], plain[test.high], runs, test.sign,
                                        mask, config.n_boot, config.seed)
                     for metric, mask in masks.items()}
    return out


class CausalTest(NamedTuple):
    """One causal test: the components chosen for ``arm`` are set to ``values`` (mean ablation:
    the condition's own mean outputs; sufficiency: the source condition's outputs) while the
    model runs as condition ``run_in``; the effect is read as a share of the metric gap between
    conditions ``low`` and ``high`` (``sign`` -1: the intervention should remove it, +1: restore
    it)."""
    arm: str
    run_in: str
    values: dict
    low: str
    high: str
    sign: int = -1


class ComponentIndex:
    """Flat component indices (heads layer-major, then MLPs) <-> (heads, mlps) sets and names."""

    def __init__(self, n_layers: int, n_heads: int):
        self.map = ScoreMap(torch.zeros(n_layers, n_heads), torch.zeros(n_layers))

    def split(self, idx):
        return components(self.map, idx)

    def name(self, i: int) -> str:
        return self.map.names[i]
