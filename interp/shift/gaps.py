"""Is there a behaviour to explain? The clean-corrupt gap of a task on a model: how much more
the model prefers the clean answer over the corrupt one on clean prompts than on corrupt ones
(logit units, mean over counterfactual pairs, bootstrap interval), zero-shot and with k
demonstrations. A circuit can only be compared where this interval lies above the gap gate
(0.1 logits)."""

from __future__ import annotations

from dataclasses import replace

import torch

from interp.analysis.metrics import logit_diff
from interp.engine import forward, length_groups, prefix_cache, repeat_cache
from interp.models import LoadedModel, load_model
from interp.shift.conditions import Condition, build_conditions, build_pairs
from interp.shift.config import ShiftConfig
from interp.shift.contrasts import condition_summary
from interp.shift.measure import ConditionRunner, flatten, pair_scores
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


def preflight(config: ShiftConfig) -> dict:
    """Gaps and reliabilities of base-zs and base-icl on n pairs (one demonstration set), and
    whether the cell can be run: base-icl must pass its gates (without an ICL behaviour there
    is nothing to explain; a base-zs that fails only undefines the shifts from it). Cheap: no
    fine-tuning. Measured on a seed disjoint from the run's (its pairs and demonstrations are
    not the ones the run analyses): selection and analysis never share data."""
    config = replace(config, seed=config.seed + PREFLIGHT_SEED_OFFSET)
    model = load_model(config.model, device=config.device, dtype=config.dtype)
    conds = {c.name: c for c in build_conditions(config, model.tokenizer) if c.seed == 0}
    pairs = build_pairs(config, model.tokenizer, config.n_pairs)
    runner = ConditionRunner(model, {}, config.task)
    out = {}
    for name in ("base-zs", "base-icl"):
        s = pair_scores(runner, conds[name], pairs)
        out[name] = condition_summary(flatten(s), s["clean"] - s["corrupt"], config.n_boot,
                                      config.seed)
    out["runnable"] = out["base-icl"]["passes"]
    out["seed"] = config.seed
    return out
