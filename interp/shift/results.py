"""From stage data to ``results.json`` (and its tables), with the verdict its rules give."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from interp.circuits import ScoreMap, distances, layer_shift
from interp.files import write_csv, write_json
from interp.models import LoadedModel
from interp.report.shift import write_report
from interp.shift.conditions import Condition, PairSet, prompt_tokens
from interp.shift.config import CONDITIONS, GAP_GATE, ShiftConfig
from interp.shift.contrasts import compare_scores, condition_summary, interval
from interp.shift.dose import dose_points
from interp.shift.estimator import mean_stat
from interp.shift.measure import flatten
from interp.shift.reanalyse import blocked_by_length, comparison_inputs, merge
from interp.shift.schema import ConditionKey, ShiftResult
from interp.stats import (
    bootstrap_ci,
    bootstrap_means,
    mcnemar,
    percentile_ci,
    resample_weights,
    wilson,
)


def _accuracy(keys: Sequence[str], acc: dict, n_boot: int, seed: int) -> dict:
    """Accuracy per query condition: with one seed, the Wilson interval over its queries; with
    several (the same queries), queries resampled and seeds a random factor (t interval)."""
    out = {}
    for qcond in ("pattern", "control"):
        flags = [acc[k][qcond] for k in keys]
        n = len(flags[0])
        by_seed = [sum(f) / len(f) for f in flags]
        if len(keys) == 1 or not n:
            k = sum(flags[0])
            ci, how = list(wilson(k, n)), "Wilson over queries"
        else:
            w = resample_weights(n, n_boot, seed)
            ci = interval(mean_stat(torch.tensor(flags, dtype=torch.float64), w, "seeds"))["ci95"]
            ci, how = [max(0.0, ci[0]), min(1.0, ci[1])], ("queries resampled, seeds a random "
                                                            "factor (t)")
        out[qcond] = {"estimate": sum(by_seed) / len(by_seed) if n else None, "ci95": ci,
                      "n": n, "seeds": len(keys), "interval": how, "by_seed": by_seed}
    return out


def _score_map(scores: dict, keys: Sequence[str], kind: str, L: int, H: int) -> ScoreMap:
    heads = torch.stack([scores[k][kind]["heads"] for k in keys]).mean(0)
    mlp = torch.stack([scores[k][kind]["mlp"] for k in keys]).mean(0)
    return ScoreMap(heads.mean(-1), mlp.mean(-1))


def _separating(config: ShiftConfig, scores: dict, keys_of: dict, boot_seed: int) -> dict:
    """Per condition, on the strategy-separating pairs: the clean-corrupt gap (a model that
    follows the shortcut shows none) and the map's reliability (first replicate)."""
    out = {}
    for name, keys in keys_of.items():
        s = scores[keys[0]]["separating"]
        summary = condition_summary(flatten(s), s["clean"] - s["corrupt"], config.n_boot,
                                    boot_seed)
        out[name] = {"gap": summary["gap"], "reliability": summary["reliability"]["estimate"]}
    return out


def separating_reliance(config: ShiftConfig, scores: dict, keys_of: dict) -> dict:
    """How much more base-icl relies on the shortcut than base-zs: on the strategy-separating
    pairs (the rule's answer changes, the shortcut's does not) each condition's clean-corrupt
    gap as a share of its gap on the counterfactual pairs (where rule and shortcut agree), and
    base-zs's share minus base-icl's (positive: ICL's gap moves less, so ICL follows the
    shortcut more). Pairs of both kinds resampled; base-icl's per-pair gaps averaged over its
    demonstration seeds (conditional on them). Undefined when a counterfactual gap interval does
    not lie above the gap gate."""
    kinds = ("counterfactual", "separating")
    gaps = {name: {kind: torch.stack([scores[k][kind]["clean"] - scores[k][kind]["corrupt"]
                                      for k in keys_of[name]]).mean(0).double()
                   for kind in kinds}
            for name in ("base-zs", "base-icl")}
    shares, boots = {}, {}
    for name, gap in gaps.items():     # the same resamples for both conditions (paired)
        cf_boot, sep_boot = (bootstrap_means(gap[kind], config.n_boot, config.seed + 13 + i)
                             for i, kind in enumerate(kinds))
        if float(percentile_ci(cf_boot)[0]) <= GAP_GATE:
            return {"estimate": None, "ci95": None, "se": None,
                    "reason": f"{name}'s counterfactual gap does not lie above {GAP_GATE:g}"}
        shares[name] = float(gap["separating"].mean() / gap["counterfactual"].mean())
        boots[name] = sep_boot / cf_boot
    diff = boots["base-zs"] - boots["base-icl"]
    low, high = percentile_ci(diff)
    return {"estimate": shares["base-zs"] - shares["base-icl"], "ci95": [float(low), float(high)],
            "se": float(diff.std()), "share_base_zs": shares["base-zs"],
            "share_base_icl": shares["base-icl"], "reason": None}


def assemble(config: ShiftConfig, conditions: Sequence[Condition], doses, steps: dict,
             acc: dict, dose_acc: dict, scores: dict, dose_scores: dict,
             pair_sets: dict[str, PairSet], ft_info: dict, model: LoadedModel,
             approximation: dict | None = None) -> dict:
    n = config.n_pairs
    keys_of: dict[str, list[str]] = {}
    for c in conditions:
        keys_of.setdefault(c.name, []).append(c.key)
    x, gaps = comparison_inputs(scores, keys_of)
    comparison = compare_scores(
        x, gaps, n_pairs=n, n_boot=config.n_boot, seed=config.seed, margin=config.margin,
        blocked=blocked_by_length({c.name: c.length_ratio for c in conditions}),
        n_heads=model.n_layers * model.n_heads)
    L, H = model.n_layers, model.n_heads
    maps = {name: _score_map(scores, keys, "counterfactual", L, H)
            for name, keys in keys_of.items()}
    cond_out = {name: _condition_record(config, model, name, conditions, keys_of, acc, ft_info,
                                        pair_sets["counterfactual"]) for name in CONDITIONS}
    dist = {name: distances(maps["base-zs"], maps[name], config.ks)
            for name in CONDITIONS if name != "base-zs"}
    gates = {name: (v["gate"]["passed"], v["gate"]["reason"])
             for name, v in comparison["summary"].items()}
    dose = dose_points(config, doses, dose_scores, dose_acc, acc["base-zs/0"]["pattern"],
                       scores[keys_of["base-zs"][0]]["counterfactual"], gates, steps)
    return merge({
        "config": config.to_dict(), "model": model.describe(), "task": config.task,
        "n_pairs": n, "conditions": cond_out,
        "distances": dist,
        "per_layer_shift": {"icl": layer_shift(maps["base-icl"], maps["base-zs"]).tolist(),
                            "ft": layer_shift(maps["ft-zs"], maps["base-zs"]).tolist()},
        "separating": _separating(config, scores, keys_of, config.seed + 7),
        "separating_reliance": separating_reliance(config, scores, keys_of),
        "approximation": approximation,
        "paired": _paired(acc, keys_of),
        "per_query": acc,
        "dose_response": dose, "ft_runs": ft_info,
        "maps": {name: {"heads": m.heads.tolist(), "mlp": m.mlp.tolist()}
                 for name, m in maps.items()},
        "map_ci": {name: _heads_ci(scores, keys, n, config) for name, keys in keys_of.items()},
        "separating_maps": {name: {"heads": m.heads.tolist(), "mlp": m.mlp.tolist()}
                            for name, m in ((n_, _score_map(scores, k, "separating", L, H))
                                            for n_, k in keys_of.items())},
        "_maps": maps,
    }, comparison)


def _condition_record(config: ShiftConfig, model: LoadedModel, name: str,
                      conditions: Sequence[Condition], keys_of: dict, acc: dict, ft_info: dict,
                      pairs: PairSet) -> dict:
    """``results.json["conditions"][name]``: accuracy and what the construction kept (seed 0's
    prompt length, label agreement and update norm; demonstrations and their answers in prompt
    order, per demonstration seed)."""
    replicas = [c for c in conditions if c.name == name]
    c = replicas[0]
    _, mean_tokens = prompt_tokens(model, config, c, pairs)
    run = ConditionKey.parse(c.update) if c.update else None
    info = ft_info["runs"].get(f"{run.name}/{run.seed}", {}) if run else {}
    labels = [[d.target for d in x.demos] for x in replicas] if c.demos else None
    return {
        "accuracy": _accuracy(keys_of[name], acc, config.n_boot, config.seed),
        "mean_prompt_tokens": float(mean_tokens),
        "demo_ids": c.demo_ids if c.demos else None,
        "demo_ids_by_seed": {str(x.seed): x.demo_ids for x in replicas if x.demos} or None,
        "demo_labels": labels[0] if labels and len(labels) == 1 else labels,
        "label_agreement": (c.label_agreement if c.label_agreement is not None
                            else info.get("label_agreement")),
        "delta_w_norm": info.get("delta_w_norm"),
        "other_task": c.other_task, "length_ratio": c.length_ratio,
        "replicates": len(keys_of[name])}


def _heads_ci(scores: dict, keys: Sequence[str], n: int, config: ShiftConfig) -> dict:
    """Per head, the bootstrap interval over pairs of its mean score (first replicate)."""
    heads = scores[keys[0]]["counterfactual"]["heads"][..., :n]
    low, high = bootstrap_ci(heads, n_boot=config.n_boot, seed=config.seed)
    return {"low": low.round(decimals=4).tolist(), "high": high.round(decimals=4).tolist()}


def _paired(acc: dict, keys_of: dict) -> dict:
    """Exact McNemar of base-icl against ft-zs on the same test queries (first seeds)."""
    a, b = keys_of["base-icl"][0], keys_of["ft-zs"][0]
    return {qcond: {"a": "base-icl", "b": "ft-zs", **mcnemar(acc[a][qcond], acc[b][qcond])}
            for qcond in ("pattern", "control")}


def shift_frame(results: dict) -> pd.DataFrame:
    """One row per condition: the primary shift and the pre-registered sensitivity distances
    (cross-fitted Spearman, heads only, MLPs only; each with its interval), then the
    uncorrected distances of the mean maps."""
    rows = []
    for c, d in results["distances"].items():
        row = {"condition": c}
        measures = {"shift": results["shift"].get(c, {}),
                    **{k: v["shift"].get(c, {})
                       for k, v in (results.get("sensitivity") or {}).items()}}
        for label, v in measures.items():
            ci = v.get("ci95") or [None, None]
            row.update({label: v.get("estimate"), f"{label}_ci_low": ci[0],
                        f"{label}_ci_high": ci[1]})
        row.update({f"raw_{k}": v for k, v in d.items() if not isinstance(v, list)})
        rows.append(row)
    return pd.DataFrame(rows)


def write_outputs(out: Path, config: ShiftConfig, results: dict, maps: dict[str, ScoreMap],
                  explorer: dict | None = None):
    write_json(out / "results.json", results)
    res = ShiftResult(results)
    write_csv(out / "conditions.csv", res.conditions_frame())
    write_csv(out / "shift.csv", shift_frame(results))
    acc_rows = [{"condition": c, "queries": q, **{k: v for k, v in a.items() if k != "by_seed"}}
                for c, v in results["conditions"].items() for q, a in v["accuracy"].items()]
    write_csv(out / "accuracy.csv", pd.DataFrame(acc_rows))
    write_report(out, results, config, maps, explorer)
