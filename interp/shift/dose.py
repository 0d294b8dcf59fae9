"""Dose-response: does the shift grow with the dose that buys the accuracy?

ICL at several shot counts (nested demonstrations of each demonstration seed) and fine-tuning
at 25 %, 50 % and 100 % of its steps; at each dose, the shift against base-zs (disattenuated
distance), the same corrected by the method's primary sham, and the pattern accuracy gained
over base-zs.
"""

from __future__ import annotations

from collections.abc import Sequence

from interp.shift.conditions import Condition
from interp.shift.config import SHAMS, ShiftConfig
from interp.shift.contrasts import map_distance
from interp.shift.measure import flatten


def dose_points(config: ShiftConfig, conditions: Sequence[Condition], scores: dict,
                accuracy: dict, zs_correct: Sequence[bool], zs_scores: dict, shift: dict,
                gates: dict, steps: dict[float, int]) -> dict:
    """``{"icl": [{shots, seed, shift, sham_corrected_shift, accuracy, accuracy_gain}],
    "ft": [{step, fraction, seed, ...}]}``; ``zs_correct``: base-zs on the pattern queries,
    ``zs_scores``: base-zs's scores on the counterfactual pairs (the doses use the first n)."""
    zs = sum(zs_correct) / len(zs_correct)
    zs_ok = gates["base-zs"][0]
    fraction_of = {step: f for f, step in steps.items()}
    out = {"icl": [], "ft": []}
    n = config.n_pairs
    zs_map = flatten(zs_scores)[:, :n]
    for cond in conditions:
        point, rel = map_distance(flatten(scores[cond.key]["counterfactual"])[:, :n], zs_map)
        point = point if zs_ok else None
        method = "icl" if cond.name.startswith("icl@") else "ft"
        sham = SHAMS["base-icl" if method == "icl" else "ft-zs"][0]
        sham_shift = shift.get(sham, {}).get("estimate")
        acc = accuracy[cond.key]["pattern"]
        acc = sum(acc) / len(acc)
        row = {"seed": cond.seed, "shift": _num(point), "reliability": _num(rel),
               "sham_corrected_shift": (_num(point) - sham_shift
                                        if point is not None and sham_shift is not None
                                        and point == point else None),
               "accuracy": acc, "accuracy_gain": acc - zs}
        if method == "icl":
            out["icl"].append({"shots": int(cond.name.split("@")[1]), **row})
        else:
            step = int(cond.name.split("@")[1])
            out["ft"].append({"step": step, "fraction": fraction_of.get(step), **row})
    if not zs_ok:
        out["reason"] = "base-zs fails its gate: shifts from base-zs are undefined"
    return out


def _num(value):
    return None if value is None or value != value else float(value)
