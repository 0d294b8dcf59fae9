"""The pre-registered claims of the circuit-shift study, their predictions and how a verdict is
read from an interval. Written before any run; never tuned to outcomes.

Every claim predicts a positive value; its margin is the smallest value that counts
(minimal-effect semantics). Verdict from the 95 % interval, in this order: ``holds`` (it lies
above +margin), ``contradicted`` (below -margin), ``positive_below_margin`` (above 0, not above
the margin), ``negative_below_margin`` (the mirror), ``no_effect`` (inside +-margin),
``inconclusive`` (otherwise, or undefined: empty estimate, ``reason`` filled); ``moot`` for the
necessity and sufficiency claims when ICL has no gain over base-zs to explain ("gain not
established"). ``icl_shifts_more`` takes the run's own rule (:func:`interp.shift.verdict.decide`,
which also asks the secondary contrast to agree), so the run and the table never disagree.

Intervals over test queries treat seeds as a random factor: queries are resampled (shared by
every seed) and, with several demonstration or fine-tuning seeds, the between-seed variance of
the per-seed accuracies is added (t interval); with one seed an interval is conditional on it.
The study corrects the verdicts for multiplicity (:func:`interp.study.claims_summary`).

If you add a claim: its row in ``_TABLE`` (name | margin | what it measures) and its estimate
in :func:`claim_rows` (both in this file), committed before the first study run that reports it;
``claim_rows`` then writes it into every study's table and report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.shift.contrasts import interval
from interp.shift.estimator import mean_stat
from interp.shift.schema import ConditionKey
from interp.shift.verdict import decide, mdd
from interp.stats import resample_weights
from interp.tasks import get_task


@dataclass(frozen=True)
class Claim:
    name: str
    prediction: str          # the sign the theory predicts
    margin: float            # |estimate| below this is no effect
    measures: str


#: every claim: its name, its margin, and what it measures (each predicts a positive value)
_TABLE = """
icl_beats_ft | 0.05 | pattern accuracy of base-icl minus ft-zs, paired on the same test queries
    (gated: one of them between the majority answer and 1)
icl_shifts_more | 0.05 | primary effects: (shift(base-icl) - shift(base-icl-other-task)) -
    (shift(ft-zs) - shift(ft-other-task)), disattenuated distances to base-zs
shift_necessary | 0.1 | share of ICL's logit-difference gain over base-zs that mean-ablating
    the k most ICL-shifted components (chosen on set A, scale-free) removes in base-icl on set
    B, minus the mean of matched random sets from outside them (Fieller interval)
shift_sufficient | 0.1 | share of that gain recovered by patching those components' final-token
    outputs from base-icl into base-zs on set B, minus matched random sets (the logit
    difference recovered, chosen minus random, is recorded beside it)
shift_tracks_gain | 0.1 | within each method whose dose buys accuracy (the trend of its pattern
    accuracy minus the dose-matched sham's on dose has an interval above 0), the trend of its
    shift minus the sham's on dose: Kendall's tau per seed over gated dose points, mean over
    seeds, t interval over seeds (at least 5 seeds); the smaller of the methods' trends and
    the smaller bounds (both must rise)
advantage_pattern_specific | 0.05 | (base-icl - ft-zs) pattern accuracy minus the same on
    control queries (gated as icl_beats_ft, on both kinds of queries)
icl_relies_on_shortcut | 0.05 | on the strategy-separating pairs (the rule's answer changes,
    the shortcut's does not), base-zs's clean-corrupt gap minus base-icl's, each as a share of
    its gap on the counterfactual pairs: positive when ICL's gap moves less, i.e. ICL follows
    the shortcut more (pre-registered before the first study run that reports it)
"""
_ROWS = _TABLE.replace("\n    ", " ").strip().splitlines()     # continuation lines joined
CLAIMS = tuple(Claim(name, "positive", float(margin), measures)
               for name, margin, measures in (row.split(" | ", 2) for row in _ROWS))

BY_NAME = {c.name: c for c in CLAIMS}


#: the claim verdict each run verdict code stands for (``icl_shifts_more``)
VERDICT_OF_CODE = {"icl_more": "holds", "ft_more": "contradicted",
                   "icl_positive_below_margin": "positive_below_margin",
                   "ft_negative_below_margin": "negative_below_margin",
                   "no_difference": "no_effect", "inconclusive": "inconclusive"}


def verdict(claim: Claim, estimate: float | None, ci: list | None, moot: bool = False
            ) -> str:
    if moot:
        return "moot"
    if estimate is None or ci is None or any(v is None or v != v for v in ci):
        return "inconclusive"
    lo, hi = ci
    m = claim.margin
    if lo > m:
        return "holds"
    if hi < -m:
        return "contradicted"
    if lo > 0:
        return "positive_below_margin"
    if hi < 0:
        return "negative_below_margin"
    if -m <= lo and hi <= m:
        return "no_effect"
    return "inconclusive"


def _per_seed(results: dict, condition: str, qcond: str) -> torch.Tensor:
    acc = results["per_query"]
    return torch.tensor([acc[k][qcond] for k in sorted(acc, key=ConditionKey.parse)
                         if ConditionKey.parse(k).name == condition], dtype=torch.float64)


def accuracy_contrast(results: dict, n_boot: int, seed: int, qconds=("pattern",)) -> dict:
    """base-icl's accuracy minus ft-zs's on the same test queries (the first query condition
    minus the others), queries resampled, seeds a random factor."""
    total = None
    for i, qcond in enumerate(qconds):
        icl, ft = _per_seed(results, "base-icl", qcond), _per_seed(results, "ft-zs", qcond)
        w = resample_weights(icl.shape[-1], n_boot, seed + i)
        stat = mean_stat(icl, w, "icl") - mean_stat(ft, w, "ft")
        total = stat if total is None else total - stat
    return interval(total)


def floor_ceiling(results: dict, task: str, qcond: str) -> str | None:
    """Why an accuracy contrast on ``qcond`` queries cannot be read, or None: at least one of
    base-icl and ft-zs must have an accuracy interval above the majority answer's accuracy
    (balanced closed answer sets: 1 / choices; open answers: 0) and below 1; both at the floor
    or at the ceiling say nothing about which method is better."""
    choices = get_task(task).choices
    floor = 1 / len(choices) if choices else 0.0
    for name in ("base-icl", "ft-zs"):
        ci = results["conditions"][name]["accuracy"][qcond].get("ci95")
        if ci is not None and ci[0] > floor and ci[1] < 1:
            return None
    return (f"no condition's {qcond} accuracy interval lies between the majority answer "
            f"({floor:.2f}) and 1 (floor or ceiling)")


def gated(contrast: dict, results: dict, task: str, qconds: Sequence[str]) -> dict:
    """An accuracy contrast, made undefined (inconclusive, with the reason) when a query kind
    it uses fails :func:`floor_ceiling`."""
    for qcond in qconds:
        reason = floor_ceiling(results, task, qcond)
        if reason is not None:
            return {**contrast, "estimate": None, "ci95": None, "reason": reason,
                    "ungated": {"estimate": contrast.get("estimate"),
                                "ci95": contrast.get("ci95")}}
    return contrast


def dose_trend_claim(dose: dict) -> dict:
    """``shift_tracks_gain``'s estimate from the dose-response trends: over the methods whose
    corrected accuracy gain rises with dose, the smallest shift trend, with the smallest bounds
    (an intersection-union test: it holds only when every such method's shift rises). Undefined
    when a method has too few seeds or no method's gain rises with dose."""
    trends = dose.get("trends") or {}
    if dose.get("reason") or not trends:
        return {"reason": dose.get("reason") or "no dose-response trends"}
    for method, t in trends.items():
        for value in ("gain", "shift"):
            if t[value]["reason"]:
                return {"reason": f"{method} {value} trend: {t[value]['reason']}"}
    rising = [m for m, t in trends.items() if t["gain"]["ci95"][0] > 0]
    if not rising:
        return {"reason": "gain not established: no method's accuracy rises with dose"}
    shifts = [trends[m]["shift"] for m in rising]
    low = min(shifts, key=lambda t: t["estimate"])
    return {"estimate": low["estimate"], "ci95": [min(t["ci95"][0] for t in shifts),
                                                 min(t["ci95"][1] for t in shifts)],
            "se": low["se"], "methods": rising, "reason": None}


def claim_rows(results: dict, model: str, task: str, n_boot: int = 500, seed: int = 0
               ) -> list[dict]:
    """The claims of one model x task run, as ``claims.csv`` rows (one per claim)."""
    cfg = results["config"]
    steps = max((p["step"] for p in results["dose_response"].get("ft", [])), default=None)
    common = {"task": task, "model": model, "shots": cfg["shots"], "n_train": cfg["n_train"],
              "steps": steps, "n_pairs": cfg["n_pairs"], "demo_seeds": cfg["demo_seeds"],
              "ft_seeds": cfg["ft_seeds"], "cell_mdd": mdd(results["effects"]["icl_minus_ft"])}
    out = []

    def add(name, est: dict, moot=False, rule_verdict=None):
        claim = BY_NAME[name]
        estimate, ci = est.get("estimate"), est.get("ci95")
        defined = estimate is not None and estimate == estimate and ci is not None
        se = est.get("se") if defined else None
        if defined and se is None:
            se = (ci[1] - ci[0]) / (2 * 1.96)
        out.append({"claim": name, **{k: common[k] for k in ("task", "model")},
                    "prediction": claim.prediction, "margin": claim.margin,
                    "estimate": estimate if defined else None,
                    "ci_low": ci[0] if defined else None, "ci_high": ci[1] if defined else None,
                    "se": se, "mdd": mdd({"se": se}) if se is not None else None,
                    "verdict": rule_verdict or verdict(claim, estimate if defined else None,
                                                       ci if defined else None, moot),
                    "reason": None if defined and not moot else (est.get("reason")
                                                                  or "undefined"),
                    **{k: common[k] for k in ("shots", "n_train", "steps", "n_pairs",
                                              "demo_seeds", "ft_seeds", "cell_mdd")}})

    add("icl_beats_ft", gated(accuracy_contrast(results, n_boot, seed), results, task,
                              ("pattern",)))
    e, sec = results["effects"]["icl_minus_ft"], results["effects_secondary"]["icl_minus_ft"]
    code, _ = decide(e, sec, BY_NAME["icl_shifts_more"].margin)
    add("icl_shifts_more", e, rule_verdict=VERDICT_OF_CODE[code])
    causal = results.get("causal") or {}
    for name, key in (("shift_necessary", "necessity_icl"), ("shift_sufficient",
                                                             "sufficiency_icl")):
        test = (causal.get(key) or {}).get("logit_diff")
        if test is None:
            add(name, {"reason": "causal tests not run"})
        else:
            add(name, test, moot=bool(test.get("moot")))
    add("shift_tracks_gain", dose_trend_claim(results["dose_response"]))
    add("icl_relies_on_shortcut", results.get("separating_reliance")
        or {"reason": "separating pairs not measured"})
    add("advantage_pattern_specific",
        gated(accuracy_contrast(results, n_boot, seed, ("pattern", "control")), results, task,
              ("pattern", "control")))
    return out
