"""Is there a behaviour to explain? The clean-corrupt gap of a task on a model: how much more
the model prefers the clean answer over the corrupt one on clean prompts than on corrupt ones
(logit units, mean over counterfactual pairs, bootstrap interval), zero-shot and with k
demonstrations. A circuit can only be compared where this interval lies above the gap gate
(0.1 logits)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from interp.analysis.metrics import logit_diff
from interp.engine import forward, length_groups, prefix_cache, repeat_cache
from interp.models import LoadedModel, load_model
from interp.shift.conditions import Condition, build_conditions, build_pairs, run_need
from interp.shift.config import LIMITS, ShiftConfig
from interp.shift.contrasts import condition_summary, map_distance
from interp.shift.measure import ConditionRunner, flatten, pair_scores
from interp.shift.verdict import MDD_FACTOR
from interp.stats import mean_ci

#: the preflight's seed is the run's plus this (the run uses seed .. seed + seeds - 1)
PREFLIGHT_SEED_OFFSET = 10_000


@torch.no_grad()
def pair_gaps(runner: ConditionRunner, condition: Condition, pairs) -> torch.Tensor:
    """Per pair: logit[answer] - logit[foil] on the clean prompt minus the same on the corrupt
    prompt, ``[n]``."""
    model = runner.model
    prefix = torch.tensor([runner.prefix(condition)], device=model.device)
    out = torch.zeros(len(pairs))
    with runner.use(condition):
        shared = prefix_cache(model, prefix)
        for idx in length_groups(pairs.clean).values():
            metric = logit_diff([pairs.answer_ids[i] for i in idx],
                                [pairs.foil_ids[i] for i in idx])
            values = []
            for side in (pairs.clean, pairs.corrupt):
                ids = torch.tensor([side[i] for i in idx], device=model.device)
                values.append(metric(forward(model, ids, repeat_cache(shared, len(idx)))))
            out[idx] = (values[0] - values[1]).float().cpu()
    return out


def measure_gaps(model: LoadedModel, config: ShiftConfig) -> dict:
    """``{"zero_shot": {estimate, ci95}, "icl": {...}}`` on ``config.n_pairs`` pairs."""
    conds = {c.name: c for c in build_conditions(config, model.tokenizer) if c.seed == 0}
    pairs = build_pairs(config, model.tokenizer, config.n_pairs)
    runner = ConditionRunner(model, {}, config.task)
    return {label: mean_ci(pair_gaps(runner, conds[name], pairs), n_boot=config.n_boot,
                           seed=config.seed)
            for label, name in (("zero_shot", "base-zs"), ("icl", "base-icl"))}


def preflight(config: ShiftConfig, target_mdd: float | None = None) -> dict:
    """Gaps and reliabilities of base-zs and base-icl on n pairs (one demonstration set), and
    whether the cell can be run: base-icl must pass its gates (without an ICL behaviour there
    is nothing to explain; a base-zs that fails only undefines the shifts from it). Cheap: no
    fine-tuning. Measured on a seed disjoint from the run's (its pairs and demonstrations are
    not the ones the run analyses): selection and analysis never share data. With
    ``target_mdd``, also the number of pairs the run needs for its primary contrast to reach
    that minimum detectable difference (:func:`plan_pairs`)."""
    config = replace(config, seed=config.seed + PREFLIGHT_SEED_OFFSET)
    model = load_model(config.model, device=config.device, dtype=config.dtype)
    built = build_conditions(config, model.tokenizer)
    conds = {c.name: c for c in built if c.seed == 0}
    pairs = build_pairs(config, model.tokenizer, config.n_pairs)
    runner = ConditionRunner(model, {}, config.task)
    out, maps = {}, {}
    for name in ("base-zs", "base-icl"):
        s = pair_scores(runner, conds[name], pairs)
        maps[name] = flatten(s)
        out[name] = condition_summary(maps[name], s["clean"] - s["corrupt"], config.n_boot,
                                      config.seed)
    out["runnable"] = out["base-icl"]["passes"]
    out["seed"] = config.seed
    out["shift_se"] = shift_se(maps["base-zs"], maps["base-icl"], config.n_boot, config.seed)
    if target_mdd is not None:
        out["plan"] = plan_pairs(model, config, out["shift_se"], target_mdd, len(built),
                                 len(runner.prefix(conds["base-icl"])) + len(pairs.clean[0]))
    return out


def shift_se(zs: torch.Tensor, icl: torch.Tensor, n_boot: int, seed: int) -> float | None:
    """The bootstrap standard error (pairs resampled) of base-icl's distance from base-zs."""
    gen = torch.Generator().manual_seed(seed)
    n = zs.shape[1]
    boots = []
    for _ in range(min(n_boot, 200)):
        idx = torch.randint(0, n, (n,), generator=gen)
        boots.append(map_distance(zs[:, idx], icl[:, idx])[0])
    boots = torch.tensor([b for b in boots if b == b], dtype=torch.float64)
    return float(boots.std()) if len(boots) > 1 else None


def plan_pairs(model: LoadedModel, config: ShiftConfig, se: float | None, target: float,
               n_conditions: int, prompt_tokens: int) -> dict:
    """Pairs for the primary contrast's MDD to reach ``target``: that contrast combines four
    distances of about the preflight's noise, so its standard error is taken as twice base-icl's
    shift's, and it shrinks as 1 / sqrt(pairs). With the run's estimated time at that size."""
    if se is None or se <= 0:
        return {"n_pairs": config.n_pairs, "reason": "no variance estimate; n_pairs kept"}
    mdd_now = MDD_FACTOR * 2 * se
    wanted = math.ceil(config.n_pairs * (mdd_now / target) ** 2)
    n_pairs = min(max(4, wanted), LIMITS["n_pairs"])
    need = run_need(model, replace(config, n_pairs=n_pairs), n_conditions, prompt_tokens,
                    prompt_tokens)
    return {"n_pairs": n_pairs, "target_mdd": target, "mdd_at_preflight": mdd_now,
            "preflight_pairs": config.n_pairs, "mdd_planned": mdd_now * math.sqrt(
                config.n_pairs / n_pairs), "estimated_hours": need.seconds / 3600,
            "capped": wanted > LIMITS["n_pairs"]}
