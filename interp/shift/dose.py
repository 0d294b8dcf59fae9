"""Dose-response: does the shift grow with the dose that buys the accuracy?

Each method at several doses, each dose beside the method's primary sham at the same dose:
ICL at several shot counts (nested demonstrations of each demonstration seed; the sham:
other-task demonstrations matched to those k in count and length), fine-tuning at 25 %, 50 %
and 100 % of its steps (the sham: ft-other-task's checkpoint at the same step). At each dose
and seed: the shift against base-zs (disattenuated distance), the pattern accuracy, and both
corrected by the sham at that dose.

Every point is gated: a shift enters only where base-zs, the point and its sham pass their
gap and reliability gates (and the sham's prefix is within the length tolerance). The trend
of a corrected value on dose is tested within a method, seeds as the units
(:func:`interp.shift.trend.seed_trend`); ``shift_tracks_gain`` reads the trends
(:mod:`interp.claims`).
"""

from __future__ import annotations

from collections.abc import Sequence

from interp.shift.conditions import Condition
from interp.shift.config import ShiftConfig
from interp.shift.contrasts import condition_summary, map_distance
from interp.shift.measure import flatten
from interp.shift.table import LENGTH_TOLERANCE
from interp.shift.trend import seed_trend

#: each method's dose points and the name of their dose in a row
METHODS = {"icl": "shots", "ft": "step"}


def sham_name(method: str) -> str:
    return f"{method}-sham"


def parse(name: str) -> tuple[str, bool, int]:
    """``"icl-sham@4"`` -> ``("icl", True, 4)``."""
    body, _, dose = name.partition("@")
    method = body.removesuffix("-sham")
    return method, body != method, int(dose)


def length_gated(cond: Condition) -> str | None:
    """Why a dose sham's prefix is too far from its point's length to correct it, or None; such
    a point needs no map (it is measured for its accuracy only)."""
    ratio = cond.length_ratio
    if ratio is not None and abs(ratio - 1) > LENGTH_TOLERANCE:
        return f"prefix length ratio {ratio:.2f}"
    return None


def _point(config: ShiftConfig, cond: Condition, scores: dict, accuracy: dict, zs_map,
           zs_ok: bool) -> dict:
    """One dose point: shift from base-zs (None when a gate fails), reliability, gate,
    pattern accuracy."""
    n = config.n_pairs
    correct = accuracy[cond.key]["pattern"]
    out = {"shift": None, "reliability": None, "passes": False,
           "gate_reason": length_gated(cond), "accuracy": sum(correct) / len(correct)}
    if out["gate_reason"] is not None:
        return out
    s = scores[cond.key]["counterfactual"]
    x = flatten(s)[:, :n]
    summary = condition_summary(x, (s["clean"] - s["corrupt"])[:n].double(), config.n_boot,
                                config.seed)
    distance, rel = map_distance(x, zs_map)
    return {**out, "shift": _num(distance) if zs_ok and summary["passes"] else None,
            "reliability": _num(rel), "passes": bool(summary["passes"]),
            "gate_reason": summary["reason"]}


def dose_points(config: ShiftConfig, conditions: Sequence[Condition], scores: dict,
                accuracy: dict, zs_correct: Sequence[bool], zs_scores: dict, gates: dict,
                steps: dict[float, int]) -> dict:
    """``{"icl": [{shots, seed, shift, sham_shift, corrected_shift, accuracy, accuracy_gain,
    sham_accuracy, corrected_gain, ...}], "ft": [{step, fraction, seed, ...}], "trends": ...}``;
    ``zs_correct``: base-zs on the pattern queries, ``zs_scores``: base-zs's scores on the
    counterfactual pairs (the doses use the first n)."""
    zs = sum(zs_correct) / len(zs_correct)
    zs_ok = gates["base-zs"][0]
    zs_map = flatten(zs_scores)[:, :config.n_pairs]
    fraction_of = {step: f for f, step in steps.items()}
    points = {(c.name, c.seed): _point(config, c, scores, accuracy, zs_map, zs_ok)
              for c in conditions}
    out: dict = {"icl": [], "ft": []}
    for (name, seed), p in points.items():
        method, is_sham, dose = parse(name)
        if is_sham:
            continue
        sham = points.get((f"{sham_name(method)}@{dose}", seed))
        row = {METHODS[method]: dose, "seed": seed, **p, "accuracy_gain": p["accuracy"] - zs,
               "sham_shift": sham and sham["shift"], "sham_passes": sham and sham["passes"],
               "sham_accuracy": sham and sham["accuracy"],
               "corrected_shift": _minus(p["shift"], sham and sham["shift"]),
               "corrected_gain": _minus(p["accuracy"], sham and sham["accuracy"])}
        if method == "ft":
            row["fraction"] = fraction_of.get(dose)
        out[method].append(row)
    out["trends"] = {method: {value: seed_trend(out[method], METHODS[method], f"corrected_{value}")
                              for value in ("shift", "gain")} for method in METHODS}
    if not zs_ok:
        out["reason"] = "base-zs fails its gate: shifts from base-zs are undefined"
    return out


def _minus(a, b):
    return None if a is None or b is None else a - b


def _num(value):
    return None if value is None or value != value else float(value)
