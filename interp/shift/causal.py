"""Does the shift carry the gain? Causal tests of the most shifted components.

Components are chosen on set A (the first n counterfactual pairs): the k whose score moves most
from base-zs on scale-free maps (each map divided by its norm, so fine-tuning's amplification of
the same map is no shift). They are tested on all n pairs of set B (never used for selection) and
on pattern test queries, beside random sets of k components drawn from outside the chosen set and
matched to its |score| deciles (in the condition they are tested in). On a pair's prompt the
interventions act at every position from the first edited token to the end, the positions the
maps sum their attribution over (so a chosen component is tested where it was scored; the
positions before are shared through the KV cache); on a test query, which has no edit, at the
final token (where the answer is read). Positions are counted from the end of the prompt, so
conditions with different prefixes line up. The tests use replicate seed 0 of every condition.

- **Necessity**: mean-ablate the set (the condition's mean activation at each position from
  the end over set A's prompts, disjoint from the test prompts) in base-icl; the share of ICL's
  gain over base-zs it removes (logit difference on pairs; accuracy on queries). Mirror: the FT
  set ablated in ft-zs, share of FT's gain removed.
- **Sufficiency**: patch the set's outputs from base-icl into base-zs (same query, no
  demonstrations), and from ft-zs into the base model (cross-model); share of the gain
  recovered.
- **Cross-condition**: the ICL set ablated in ft-zs (share of FT's gain removed) and the FT set
  in base-icl.

Each reports the metric the chosen set removes (or recovers) minus the random sets' mean, in
logit units with a bootstrap interval over test prompts (``removed``), that as a share of the
gain with Fieller's interval (the claim's estimate), and the chosen set's percentile among the
random sets. A test whose method has no established gain over base-zs (the logit-difference
gain on all 2n pairs, interval not above 0) is ``moot``: "gain not established", not "no
gain".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import torch

from interp.analysis.components import hook_names
from interp.analysis.metrics import first_answer_token, logit_diff
from interp.analysis.patching import auto_chunk, first_difference, stacked_sets
from interp.circuits import ScoreMap, components
from interp.engine import capture, encode, forward, length_groups
from interp.names import largest
from interp.prompts import answer_sep
from interp.shift.conditions import Condition, PairSet
from interp.shift.config import ShiftConfig
from interp.shift.measure import ConditionRunner, flatten
from interp.stats import mean_ci, percentile_ci, resample_weights
from interp.tasks import Example, get_task


class Prompts:
    """Test prompts (query tokens without prefix), where each is intervened on, and how to
    score each: logit difference of a pair's answer and foil, or correctness of a query
    (closed sets: the gold choice has the highest first-token logit; open answers: the gold's
    first token is the top token). ``edit``: the first intervened query position (a pair's
    first edited token; a query's final token)."""

    def __init__(self, config: ShiftConfig, tokenizer, pairs: PairSet, queries: Sequence[Example]):
        sep = answer_sep(config.task)
        choices = get_task(config.task).choices
        queries_ids = [encode(tokenizer, q.input, first=False) for q in queries]
        self.ids = list(pairs.clean) + queries_ids
        self.n_pairs = len(pairs)
        self.edit = [first_edit(a, b) for a, b in zip(pairs.clean, pairs.corrupt)] + [
            len(q) - 1 for q in queries_ids]
        self.answer = list(pairs.answer_ids) + [first_answer_token(tokenizer, sep + q.target)
                                                for q in queries]
        self.foil = list(pairs.foil_ids) + [0] * len(queries)
        self.choice_ids = [first_answer_token(tokenizer, sep + c) for c in choices] \
            if choices else None

    @property
    def span(self) -> int:
        """The most positions any prompt is intervened at."""
        return max((len(ids) - e for ids, e in zip(self.ids, self.edit)), default=1)

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """Prompt indices by (length, positions intervened at): one forward each, no padding."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, (ids, e) in enumerate(zip(self.ids, self.edit)):
            out.setdefault((len(ids), len(ids) - e), []).append(i)
        return out

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


def first_edit(clean: Sequence[int], corrupt: Sequence[int]) -> int:
    """The first position where a pair's prompts differ (the last one if they never do)."""
    return min(first_difference(torch.tensor([clean]), torch.tensor([corrupt])), len(clean) - 1)


def tail_values(runner: ConditionRunner, cond: Condition, prompts: Prompts, span: int
                ) -> dict[str, torch.Tensor]:
    """Every head's ``hook_z`` and every MLP's output at each prompt's last ``span`` positions
    (right-aligned: index -1 is the final token), ``[n, span, ...]``."""
    model = runner.model
    names = hook_names(model.n_layers)
    prefix = runner.prefix(cond)
    out: dict[str, torch.Tensor] = {}
    with runner.use(cond), torch.no_grad():
        for idx in length_groups(prompts.ids).values():    # one forward per length
            tokens = torch.tensor([prefix + prompts.ids[i] for i in idx], device=model.device)
            store, hooks = capture(names, lambda act: act[:, -span:].detach())
            forward(model, tokens, hooks=hooks)
            for name in names:
                got = store[name]                   # fewer than span when the prompt is shorter
                if name not in out:
                    out[name] = torch.zeros(len(prompts.ids), span, *got.shape[2:],
                                            dtype=got.dtype, device=got.device)
                out[name][idx, span - got.shape[1]:] = got
    return out


def tail_means(values: dict[str, torch.Tensor], prompts: Prompts) -> dict[str, torch.Tensor]:
    """The mean of :func:`tail_values` over prompts at each position from the end, counting only
    prompts whose query reaches that far back (not their prefix): ``[1, span, ...]``."""
    span = next(iter(values.values())).shape[1]
    back = torch.arange(span - 1, -1, -1)                          # positions from the end
    inside = back[None] < torch.tensor([len(ids) for ids in prompts.ids])[:, None]   # [n, span]
    weight = inside.double() / inside.sum(0).clamp_min(1)
    out = {}
    for name, v in values.items():
        w = weight.to(v.device).reshape(*weight.shape, *(1,) * (v.dim() - 2))
        out[name] = (v.double() * w).sum(0, keepdim=True).to(v.dtype)
    return out


def run_sets(runner: ConditionRunner, cond: Condition, prompts: Prompts, sets,
             values: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Per set and prompt, the prompt's score with the set's components set to ``values``
    (right-aligned, per prompt ``[n, span, ...]`` or one mean ``[1, span, ...]``) at the
    prompt's intervened positions: ``[n_sets, n]``. The first row of the result is the
    unintervened run when ``sets[0]`` is empty."""
    model = runner.model
    prefix = runner.prefix(cond)
    out = torch.zeros(len(sets), len(prompts.ids))
    with runner.use(cond):
        for (_, n_pos), idx in prompts.groups().items():
            tokens = torch.tensor([prefix + prompts.ids[i] for i in idx], device=model.device)
            T = tokens.shape[1]
            vals = {} if values is None else {
                k: (v[idx] if v.shape[0] > 1 else v)[:, v.shape[1] - n_pos:]
                for k, v in values.items()}
            chunk = max(1, auto_chunk(model, len(idx), n_pos, T - n_pos))
            out[:, idx] = stacked_sets(model, tokens, sets, vals, prompts.metric(idx),
                                       T - n_pos, chunk)
    return out


def matched_random_sets(importance: torch.Tensor, chosen: Sequence[int], n_sets: int,
                        seed: int = 0) -> list[list[int]]:
    """Random sets of ``len(chosen)`` components drawn from outside the chosen set, each chosen
    component replaced by a random one of the same |importance| decile (distinct within a set);
    where a decile has none left, the component nearest in |importance| outside the chosen set
    and the set so far."""
    size = importance.abs()
    order = size.argsort()
    decile = torch.empty_like(order)
    decile[order] = (torch.arange(len(order)) * 10) // len(order)
    taken = set(int(c) for c in chosen)
    pools = {d: [i for i in (decile == d).nonzero().flatten().tolist() if i not in taken]
             for d in range(10)}
    rng = random.Random(f"matched|{seed}")
    out = []
    for _ in range(n_sets):
        picked: list[int] = []
        for c in chosen:
            pool = [i for i in pools[int(decile[c])] if i not in picked]
            if not pool:
                free = [i for i in range(len(size)) if i not in taken and i not in picked]
                pool = [min(free, key=lambda i: abs(float(size[i] - size[c])))] if free else []
            if pool:
                picked.append(rng.choice(pool))
        out.append(picked)
    return out


def most_shifted(maps: dict[str, torch.Tensor], name: str, k: int) -> list[int]:
    """The ``k`` components whose score moves most from base-zs to ``name``, on scale-free maps
    (each map divided by its norm): a condition that only amplifies base-zs's map (as
    fine-tuning's larger gap does) has shifted nothing."""
    a, b = maps[name], maps["base-zs"]
    return largest(a / a.norm().clamp_min(1e-12) - b / b.norm().clamp_min(1e-12), k)


def gain_interval(high: torch.Tensor, low: torch.Tensor, n_boot: int, seed: int) -> dict:
    """The mean of ``high - low`` over prompts with its bootstrap interval; ``established`` when
    the interval lies above 0."""
    out = mean_ci(high - low, n_boot=n_boot, seed=seed)
    return {**out, "established": out["ci95"][0] > 0}


def fieller(a: float, b: float, boot_a: torch.Tensor, boot_b: torch.Tensor, z: float = 1.96
            ) -> list[float] | None:
    """Fieller's 95 % interval of the ratio ``a / b`` from the bootstrap (co)variances of
    numerator and denominator; None when it is unbounded (the denominator's interval reaches
    0: the ratio is not defined by these data)."""
    cov = torch.cov(torch.stack([boot_a, boot_b]).double())
    v11, v12, v22 = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    qa, qb, qc = b * b - z * z * v22, -2 * (a * b - z * z * v12), a * a - z * z * v11
    disc = qb * qb - 4 * qa * qc
    if qa <= 0 or disc < 0:
        return None
    root = disc ** 0.5
    return [(-qb - root) / (2 * qa), (-qb + root) / (2 * qa)]


def share_test(base: torch.Tensor, reference: torch.Tensor, runs: torch.Tensor, sign: float,
               mask: torch.Tensor, n_boot: int, seed: int, gain: dict | None = None) -> dict:
    """What the chosen set (``runs[0]``) does beyond matched random sets (``runs[1:]``) to the
    gain ``reference - base`` over the prompts in ``mask``: the metric it removes (``sign`` -1:
    reference - run) or recovers (+1: run - base), chosen minus the random mean (``removed``,
    in metric units, bootstrap interval over prompts), and that as a share of the gain (Fieller
    interval). ``moot`` when the gain (``gain``: a full-sample interval; default: these
    prompts') is not established; then there is nothing to explain."""
    idx = mask.nonzero().flatten()
    if len(idx) == 0:
        return {"estimate": None, "ci95": None, "reason": "no prompts of this kind"}
    b, r, x = base[idx].double(), reference[idx].double(), runs[:, idx].double()
    w = resample_weights(len(idx), n_boot, seed)                    # [n_boot, m]
    effect = (r[None] - x) if sign < 0 else (x - b[None])           # [sets, m]
    numerator = effect[0] - effect[1:].mean(0) if len(effect) > 1 else effect[0]
    num, num_boot = float(numerator.mean()), numerator @ w.T
    den, den_boot = float((r - b).mean()), (r - b) @ w.T
    gain = gain or gain_interval(r, b, n_boot, seed)
    moot = not gain["established"]
    ci = None if moot else fieller(num, den, num_boot, den_boot)
    shares = effect.mean(-1) / den if den else effect.mean(-1) * float("nan")
    nlo, nhi = percentile_ci(num_boot)
    reason = ("gain not established (its interval does not lie above 0)" if moot else
              None if ci is not None else "the share's Fieller interval is unbounded")
    return {"estimate": None if moot else num / den if den else None, "ci95": ci,
            "removed": {"estimate": num, "ci95": [float(nlo), float(nhi)]},
            "chosen_share": float(shares[0]), "random_mean_share": float(shares[1:].mean()),
            "percentile": float((shares[1:] < shares[0]).double().mean()),
            "gain": gain, "gain_test_prompts": den, "moot": moot, "reason": reason,
            "n_prompts": len(idx)}


REPLICATE = 0   #: the tests run on replicate seed 0 of every condition (said in causal.json)


def full_gains(scores: dict, n_boot: int, seed: int) -> dict[str, dict]:
    """Each method's gain in logit difference over base-zs on all pairs of both sets (clean
    prompts, replicate 0): what decides whether a test is moot."""
    clean = {name: scores[f"{name}/{REPLICATE}"]["counterfactual"]["clean"]
             for name in ("base-zs", "base-icl", "ft-zs")}
    return {high: gain_interval(clean[high], clean["base-zs"], n_boot, seed)
            for high in ("base-icl", "ft-zs")}


def _plan(runner, conds, prompts: Prompts, reference: Prompts) -> dict:
    """The six tests; ablation means come from ``reference`` (set A's prompts, disjoint from
    the test prompts), sufficiency sources are the test prompts' own outputs."""
    span = prompts.span
    means = {name: tail_means(tail_values(runner, conds[name], reference, span), reference)
             for name in ("base-icl", "ft-zs")}
    sources = {name: tail_values(runner, conds[name], prompts, span)
               for name in ("base-icl", "ft-zs")}
    return {
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


def _header(config: ShiftConfig, k: int, chosen: dict, random_for: dict, template,
            n_queries: int) -> dict:
    n = config.n_pairs
    overlap = {arm: max((len(set(r) & set(chosen[arm])) for r in random_for[arm]), default=0)
               for arm in chosen}
    return {"k": k, "replicate": REPLICATE, "selection_pairs": n, "n_test_pairs": n,
            "test_queries": n_queries, "random_sets": config.n_random_sets,
            "ranking": "scale-free: |map/||map|| - base-zs/||base-zs|||, on set A's pairs",
            "positions": "pairs: every position from the first edited token (where the maps "
                         "are scored); queries: the final token",
            "ablation_means": "set A's prompts, per position from the end",
            "overlap_with_chosen": overlap,
            "chosen": {arm: [template.name(i) for i in chosen[arm]] for arm in chosen}}


def causal_tests(runner: ConditionRunner, config: ShiftConfig, conds: dict[str, Condition],
                 scores: dict, pair_sets: dict[str, PairSet], queries: dict) -> dict:
    """Components chosen on set A's n pairs, tested on all n pairs of set B (and on pattern
    test queries), against random sets from outside the chosen set."""
    n, k = config.n_pairs, max(config.ks)
    maps = {name: flatten(scores[f"{name}/{REPLICATE}"]["counterfactual"])[:, :n].mean(-1)
            for name in ("base-zs", "base-icl", "ft-zs")}
    chosen = {"icl": most_shifted(maps, "base-icl", k), "ft": most_shifted(maps, "ft-zs", k)}
    template = ComponentIndex(*scores["base-zs/0"]["counterfactual"]["heads"].shape[:2])
    pairs = pair_sets["counterfactual"]
    prompts = Prompts(config, runner.model.tokenizer, pairs.subset(range(n, 2 * n)),
                      queries["pattern"][: min(config.n_eval, 32)])
    reference = Prompts(config, runner.model.tokenizer, pairs.subset(range(n)), [])
    is_pair = torch.arange(len(prompts.ids)) < prompts.n_pairs
    random_for = {arm: matched_random_sets(maps[where], chosen[arm], config.n_random_sets,
                                           config.seed + len(arm))
                  for arm, where in (("icl", "base-icl"), ("ft", "ft-zs"))}
    plain = {name: run_sets(runner, conds[name], prompts, [((), ())], None)[0]
             for name in ("base-zs", "base-icl", "ft-zs")}
    gains = full_gains(scores, config.n_boot, config.seed)
    out = _header(config, k, chosen, random_for, template, int((~is_pair).sum()))
    for name, test in _plan(runner, conds, prompts, reference).items():
        sets = [template.split(chosen[test.arm])] + [template.split(r)
                                                     for r in random_for[test.arm]]
        runs = run_sets(runner, conds[test.run_in], prompts, sets, test.values)
        low, high = plain[test.low], plain[test.high]
        out[name] = {"n_test_pairs": n, "ranking": "scale-free",
                     "overlap_with_chosen": out["overlap_with_chosen"][test.arm],
                     "logit_diff": share_test(low, high, runs, test.sign, is_pair,
                                              config.n_boot, config.seed, gains[test.high]),
                     "accuracy": share_test(low, high, runs, test.sign, ~is_pair,
                                            config.n_boot, config.seed)}
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
