"""Is the map's approximation as good in every condition? Attribution patching is a first-order
estimate of activation patching whose error may differ by condition (long ICL prompts, a
fine-tuned model's amplified gap) and so look like a shift. On a few counterfactual pairs per
condition (replicate 0) every head's attribution score is compared with the exact effect of
patching that head (``hook_z`` at every position, clean into corrupt): Pearson correlation and
the least-squares slope of exact on attribution. A condition below :data:`AGREEMENT_BAR` is
named in the verdict sentence.
"""

from __future__ import annotations

import torch

from interp.analysis.metrics import logit_diff
from interp.analysis.patching import activation_patch, run_metric
from interp.engine import length_groups
from interp.shift.conditions import Condition, PairSet
from interp.shift.measure import ConditionRunner
from interp.stats import pearson

#: the correlation between attribution and activation patching a condition's map must reach
AGREEMENT_BAR = 0.8
#: pairs per condition checked (those of the most common token length among the first 16)
CHECK_PAIRS = 4


def _pairs_to_check(pairs: PairSet) -> list[int]:
    groups = length_groups(pairs.clean[:16])
    return max(groups.values(), key=len)[:CHECK_PAIRS]


def exact_heads(runner: ConditionRunner, cond: Condition, pairs: PairSet, idx: list[int]
                ) -> torch.Tensor:
    """Activation patching of every head (denoising, every position): ``[L, H, len(idx)]``,
    the metric's change from the corrupt run."""
    prefix = runner.prefix(cond)
    model = runner.model
    with runner.use(cond):
        clean = torch.tensor([prefix + pairs.clean[i] for i in idx], device=model.device)
        corrupt = torch.tensor([prefix + pairs.corrupt[i] for i in idx], device=model.device)
        metric = logit_diff([pairs.answer_ids[i] for i in idx], [pairs.foil_ids[i] for i in idx])
        patched = activation_patch(model, clean, corrupt, metric, "heads")
        return (patched - run_metric(model, corrupt, metric)).float().cpu()


def approximation_check(runner: ConditionRunner, conds: dict[str, Condition], scores: dict,
                        pairs: PairSet) -> dict:
    """Per condition: ``pearson`` and ``slope`` of exact on attribution head scores over the
    checked pairs, ``n_pairs``, and ``passes`` (``pearson >= AGREEMENT_BAR``)."""
    idx = _pairs_to_check(pairs)
    out = {"bar": AGREEMENT_BAR, "pairs": idx, "component": "heads"}
    for name, cond in conds.items():
        attr = scores[f"{name}/0"]["counterfactual"]["heads"][..., idx].flatten().double()
        exact = exact_heads(runner, cond, pairs, idx).flatten().double()
        r = float(pearson(attr, exact))
        centred = attr - attr.mean()
        slope = float((centred * (exact - exact.mean())).sum() / centred.pow(2).sum()) \
            if centred.abs().sum() > 0 else float("nan")
        out[name] = {"pearson": r if r == r else None, "slope": slope if slope == slope else None,
                     "n_pairs": len(idx), "passes": bool(r == r and r >= AGREEMENT_BAR)}
    return out


def agreement_note(check: dict | None) -> str:
    """The verdict sentence's note on conditions whose map approximates patching poorly."""
    if not check:
        return ""
    low = [f"{name} (r = {v['pearson']:.2f})" if v["pearson"] is not None else f"{name} (r "
           "undefined)" for name, v in check.items() if isinstance(v, dict) and not v["passes"]]
    if not low:
        return ""
    return (f" Attribution agrees with activation patching below r = {check['bar']:g} in "
            f"{', '.join(low)}: a shift there may be the approximation's error.")
