"""The comparison of a finished run, recomputed from its stored per-pair scores (no model):
``interp compare RUN_DIR`` and the last step of every run share this code."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from interp.errors import ConfigError
from interp.files import load_tensors, read_json
from interp.shift.agreement import agreement_note
from interp.shift.config import CONDITIONS
from interp.shift.contrasts import compare_scores
from interp.shift.measure import flatten
from interp.shift.schema import ConditionKey
from interp.shift.table import LENGTH_TOLERANCE

#: the results.json keys the comparison writes (besides each condition's summary)
COMPARISON_KEYS = ("shift", "effects", "effects_secondary", "effects_direct", "sensitivity",
                   "verdict_code", "verdict_rule", "verdict", "verdict_rules",
                   "equivalence_margin", "bootstrap")
SUMMARY_KEYS = ("gap", "reliability", "gate", "noise_floor")


def blocked_by_length(length_ratios: dict[str, float | None]) -> dict[str, str]:
    """Shams whose prompt length is outside the tolerance fail their gate for that reason."""
    return {name: f"prompt length {r:.2f} x base-icl's, outside the {LENGTH_TOLERANCE:.0%} "
                  f"tolerance"
            for name, r in length_ratios.items() if r is not None and abs(r - 1) > LENGTH_TOLERANCE}


def comparison_inputs(scores: dict, keys_of: dict[str, list[str]]) -> tuple[dict, dict]:
    """``compare_scores``'s scores and gaps from nested stage scores
    (``scores[key]["counterfactual"][field]``) and each condition's replicate keys."""
    cf = {k: scores[k]["counterfactual"] for keys in keys_of.values() for k in keys}
    return ({name: [flatten(cf[k]) for k in keys] for name, keys in keys_of.items()},
            {name: [cf[k]["clean"] - cf[k]["corrupt"] for k in keys]
             for name, keys in keys_of.items()})


def merge(results: dict, comparison: dict) -> dict:
    """``results`` with the comparison's keys and each condition's summary put in; the verdict
    sentence names the conditions whose maps approximate activation patching poorly."""
    for name, summary in comparison["summary"].items():
        results["conditions"].setdefault(name, {}).update(
            {k: summary[k] for k in SUMMARY_KEYS})
    results.update({k: comparison[k] for k in COMPARISON_KEYS})
    results["gates"] = {**comparison["gates"], "length_tolerance": LENGTH_TOLERANCE}
    results["verdict"] += agreement_note(results.get("approximation"))   # named conditions
    return results


def nested_scores(flat: dict[str, torch.Tensor]) -> dict:
    """Stage scores ``{"key|kind|field": tensor}`` as ``{key: {kind: {field: tensor}}}``."""
    out: dict = {}
    for name, t in flat.items():
        key, kind, field = name.split("|")
        out.setdefault(key, {}).setdefault(kind, {})[field] = t
    return out


def _keys_of(scores: dict) -> dict[str, list[str]]:
    keys_of: dict[str, list[str]] = {}
    for key in sorted(scores, key=ConditionKey.parse):
        name = ConditionKey.parse(key).name
        if name in CONDITIONS:
            keys_of.setdefault(name, []).append(key)
    return keys_of


def reanalyse(run_dir: str | Path, margin: float | None = None, n_boot: int | None = None
              ) -> dict:
    """A run's ``results.json`` with its comparison recomputed from ``scores.safetensors``
    (``margin`` and ``n_boot`` default to the run's own)."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    flat = load_tensors(run_dir / "scores.safetensors")
    if results is None or flat is None:
        raise ConfigError(f"{run_dir} has no readable results.json and scores.safetensors "
                          f"(the directory of a finished `interp shift` run)")
    config = results["config"]
    margin = config["margin"] if margin is None else margin
    if not 0 <= margin < 1:
        raise ConfigError(f"--margin must be in [0, 1), got {margin}")
    scores = nested_scores(flat)
    x, gaps = comparison_inputs(scores, _keys_of(scores))
    lengths = {n: c.get("length_ratio") for n, c in results["conditions"].items()}
    model = results["model"]
    comparison = compare_scores(x, gaps, n_pairs=config["n_pairs"],
                                n_boot=n_boot or config["n_boot"], seed=config["seed"],
                                margin=margin, blocked=blocked_by_length(lengths),
                                n_heads=model["n_layers"] * model["n_heads"])
    out = merge(copy.deepcopy(results), comparison)
    out["reanalysis"] = {"from": str(run_dir), "margin": margin,
                         "n_boot": n_boot or config["n_boot"]}
    return out
