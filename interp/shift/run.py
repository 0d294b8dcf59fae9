"""``run_shift``: the controlled circuit-shift experiment, stage by stage.

1. ``ft/``: fine-tuning runs (ft-zs and its shams, per fine-tuning seed), trained on copies of
   the base model before it is bridged; only their weight updates are kept;
2. ``accuracy.json``: every condition on the same pattern and control test queries;
3. ``scores.safetensors``: every head's and MLP's effect on 2n counterfactual pairs (n for the
   maps, n more for the noise floor) and n strategy-separating pairs, per condition;
4. ``dose.safetensors`` / ``dose.json``: ICL at several shot counts, FT at 25/50/100 % of its
   steps, each beside its primary sham at the same dose;
5. ``probes.json``: faithfulness, logit lens, attention views, ICL heads (``probes=False`` skips);
6. ``causal.json`` (with ``causal=True``): necessity, sufficiency and cross-condition
   faithfulness of the most shifted components, beside matched random sets;
7. ``results.json``, ``conditions.csv``, ``shift.csv``, ``accuracy.csv``, ``report.html``,
   ``provenance.json``.

The base model is loaded once and bridged once; fine-tuned conditions are weight swaps into it.
"""

from __future__ import annotations

import hashlib
import json
import time

import torch

from interp.circuits import ScoreMap
from interp.errors import ConfigError
from interp.files import check_writable, now
from interp.locks import release_outputs
from interp.models import LoadedModel, load_model
from interp.provenance import write_provenance
from interp.shift import probes
from interp.shift.agreement import approximation_check
from interp.shift.causal import causal_tests
from interp.shift.conditions import (
    Condition,
    build_conditions,
    build_pairs,
    check_fits,
    check_run_size,
    dose_conditions,
    queries,
)
from interp.shift.config import ShiftConfig
from interp.shift.dose import length_gated
from interp.shift.explore import explorer_data
from interp.shift.measure import ConditionRunner, accuracy, measure_all
from interp.shift.reanalyse import nested_scores
from interp.shift.results import assemble, write_outputs
from interp.shift.schema import ShiftResult
from interp.shift.stages import Stages
from interp.shift.training import dose_steps, train_updates


def _flat_scores(scores: dict) -> dict[str, torch.Tensor]:
    return {f"{key}|{kind}|{name}": t for key, kinds in scores.items()
            for kind, tensors in kinds.items() for name, t in tensors.items()}


def _accuracy(runner: ConditionRunner, conds, qs) -> dict:
    return {c.key: accuracy(runner, c, qs) for c in conds}


def run_shift(config: ShiftConfig, model: LoadedModel | None = None) -> ShiftResult:
    """Run (or resume) every stage and write the report; returns the results, typed
    (:class:`~interp.shift.schema.ShiftResult`, also a mapping over ``results.json``'s keys).
    ``model``: an already loaded, not yet bridged base model (it is bridged here). The output
    directory is this run's alone while it runs."""
    config = config.resolved()
    try:
        _run_stages(config, model)
        return ShiftResult.load(config.out)     # exactly what results.json holds
    finally:
        release_outputs(config.out)


def demo_digest(conditions) -> str:
    """A digest of every condition's demonstrations (ids and answers, in prompt order)."""
    text = json.dumps([[c.key, [(d.id, d.target) for d in c.demos]] for c in conditions])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pair_sets(config: ShiftConfig, base: LoadedModel, n_counterfactual: int,
               n_separating: int) -> dict:
    return {"counterfactual": build_pairs(config, base.tokenizer, n_counterfactual),
            "separating": build_pairs(config, base.tokenizer, n_separating, "separating")}


def _run_stages(config: ShiftConfig, model: LoadedModel | None) -> None:
    out = check_writable(config.out)
    started, began = now(), time.perf_counter()
    t = time.perf_counter()
    base = model or load_model(config.model, device=config.device, dtype=config.dtype)
    if base.has_bridge:
        raise ConfigError("run_shift needs the base model before its TransformerBridge is built")
    conditions = build_conditions(config, base.tokenizer)
    stages = Stages(out, config.force, {"demos": demo_digest(conditions)})
    stages.time("load_model", t)
    steps = dose_steps(config)
    doses = dose_conditions(config, steps, base.tokenizer)
    check_run_size(base, config, [*conditions, *doses],     # sizes, in seconds, before
                   _pair_sets(config, base, 4, 4), queries(config, 4))   # building them all
    pair_sets = _pair_sets(config, base, 2 * config.n_pairs, config.n_pairs)
    qs = queries(config)
    check_fits(base, config, [*conditions, *doses], pair_sets, qs)   # every prompt, before work
    t = time.perf_counter()
    updates, ft_info = train_updates(config, base, out, config.force)
    stages.time("finetune", t)
    runner = ConditionRunner(base, updates, config.task)
    acc = stages.json("accuracy", config.accuracy_settings(),
                      lambda: _accuracy(runner, conditions, qs))
    same = _same_as_main(conditions, doses)
    todo = [d for d in doses if d.key not in same]
    dose_acc = stages.json("dose_accuracy", config.dose_settings(), lambda: _accuracy(
        runner, todo, {"pattern": qs["pattern"]}))
    dose_acc = {**dose_acc, **{k: {"pattern": acc[m]["pattern"]} for k, m in same.items()}}
    t = time.perf_counter()
    base.bridge  # noqa: B018 - bridged once, here, after every fine-tuning copy was made
    stages.time("bridge", t)
    scores = nested_scores(stages.tensors(
        "scores", config.scores_settings(),
        lambda: _flat_scores(measure_all(runner, conditions, pair_sets, config.progress))))
    dose_scores = _dose_scores(stages, config, runner, todo, same, scores, pair_sets)
    by_name = {c.name: c for c in conditions if c.seed == 0}
    approximation = stages.json(
        "approximation", config.approximation_settings(), lambda: approximation_check(
            runner, by_name, scores, pair_sets["counterfactual"]))
    results = assemble(config, conditions, doses, steps, acc, dose_acc, scores, dose_scores,
                       pair_sets, ft_info, base, approximation)
    maps = results.pop("_maps")
    explorer = _optional_stages(stages, config, runner, by_name, maps, scores, pair_sets, qs,
                                results)
    results["demo_ids_by_stage"] = _demo_stages(config, by_name)
    stages.time("total", began)
    results["timings"] = stages.timings
    results["reused_stages"] = stages.reused
    write_outputs(out, config, results, maps, explorer)
    write_provenance(out, config.to_dict(), {"base": base}, started,
                     seeds={"seed": config.seed, "demo_seeds": config.demo_seeds,
                            "ft_seeds": config.ft_seeds})


def _dose_scores(stages: Stages, config: ShiftConfig, runner, todo, same: dict, scores: dict,
                 pair_sets: dict) -> dict:
    """Maps of the dose points on the first n counterfactual pairs; the full doses are base-icl
    and ft-zs themselves (their maps' first n pairs); shams too far in length from their point
    get none."""
    n = config.n_pairs
    dose_pairs = {"counterfactual": pair_sets["counterfactual"].subset(range(n))}
    mapped = [d for d in todo if length_gated(d) is None]     # a length-gated sham needs no map
    dose_scores = nested_scores(stages.tensors(
        "dose", config.dose_settings(),
        lambda: _flat_scores(measure_all(runner, mapped, dose_pairs, config.progress))))
    for key, main in same.items():
        dose_scores[key] = {"counterfactual": {
            f: t[..., :n] for f, t in scores[main]["counterfactual"].items()}}
    return dose_scores


def _optional_stages(stages: Stages, config: ShiftConfig, runner, by_name: dict, maps,
                     scores: dict, pair_sets: dict, qs: dict, results: dict) -> dict | None:
    """Probes and the explorer (``config.probes``), causal tests (``config.causal``), added to
    ``results``; returns the explorer's data (None without probes)."""
    explorer = None
    if config.probes:
        results["probes"] = stages.json("probes", config.probes_settings(),
                                        lambda: _probes(runner, config, by_name, maps, scores,
                                                        pair_sets))
        explorer = stages.json("explorer", config.probes_settings(), lambda: explorer_data(
            runner, by_name, pair_sets["counterfactual"]))
        results["explorer_file"] = "explorer.json"
    if config.causal:
        results["causal"] = stages.json("causal", config.causal_settings(), lambda: causal_tests(
            runner, config, by_name, scores, pair_sets, qs))
    return explorer


def _same_as_main(conditions, doses) -> dict[str, str]:
    """Dose points that are main conditions (the same demonstrations and weights: base-icl at
    its shots, ft-zs after all its steps, and their shams alike): dose key -> main key."""
    main = {(tuple((d.id, d.target) for d in c.demos), c.update): c.key for c in conditions}
    out = {}
    for d in doses:
        key = main.get((tuple((x.id, x.target) for x in d.demos), d.update))
        if key is not None:
            out[d.key] = key
    return out


def _probes(runner, config: ShiftConfig, conds: dict[str, Condition], maps, scores: dict,
            pair_sets) -> dict:
    """Faithfulness out of sample: circuits selected on set A's pairs (replicate 0), their
    recovery measured on set B's; the other probes on set A."""
    n = config.n_pairs
    pairs = pair_sets["counterfactual"].subset(range(n))
    held_out = pair_sets["counterfactual"].subset(range(n, 2 * n))
    selected = {name: ScoreMap(scores[f"{name}/0"]["counterfactual"]["heads"][..., :n].mean(-1),
                               scores[f"{name}/0"]["counterfactual"]["mlp"][..., :n].mean(-1))
                for name in conds}
    sizes = sorted(set(probes.FAITHFULNESS_SIZES) | {max(config.ks)})
    timings = {}
    out = {}
    for name, fn in (("faithfulness", lambda: probes.faithfulness(runner, conds, selected,
                                                                  held_out, sizes)),
                     ("logit_lens", lambda: probes.logit_lens(runner, config, conds)),
                     ("attention_views", lambda: probes.attention_views(runner, conds, maps,
                                                                        pairs)),
                     ("icl_heads", lambda: probes.icl_heads(runner, config, conds["base-icl"],
                                                            maps))):
        began = time.perf_counter()
        out[name] = fn()
        timings[name] = round(time.perf_counter() - began, 2)
    out["timings"] = timings
    return out


def _demo_stages(config: ShiftConfig, conds: dict[str, Condition]) -> dict[str, list[str]]:
    """The demonstrations every stage used: all the one base-icl set (seed 0)."""
    ids = conds["base-icl"].demo_ids
    stages = ["accuracy", "scores"]
    if config.probes:
        stages += ["faithfulness", "logit_lens", "attention_views", "icl_heads"]
    if config.causal:
        stages += ["causal"]
    return {stage: list(ids) for stage in stages}
