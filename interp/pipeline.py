"""The circuit-shift experiment (``interp shift``): does ICL re-route the computation more than
fine-tuning does?

Stages, each saved under ``out/`` and skipped when a rerun finds it done:
1. ``ft/``: the fine-tuned model (trained on the fly, or ``ft_dir``);
2. ``accuracy.json``: base-zs, base-icl and ft-zs on the same test queries, pattern and control;
3. ``scores.safetensors``: every head's and MLP's normalised effect on the same counterfactual
   pairs in each condition (attribution patching, or activation patching with ``exact``);
4. ``results.json``: circuits, shift(ICL) = d(base-icl, base-zs) vs shift(FT) = d(ft-zs,
   base-zs) with bootstrap intervals over pairs and a split-half noise floor, faithfulness
   curves (own and cross-condition), logit-lens commitment to the shortcut, and the verdict;
5. ``report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.circuits import ScoreMap, components, distances, layer_shift, top_k
from interp.errors import ConfigError
from interp.models import LoadedModel, load_model

CONDITIONS = ("base-zs", "base-icl", "ft-zs")


@dataclass
class ShiftConfig:
    model: str = "smollm2-135m"
    task: str = "boolean"
    shots: int = 4
    n_train: int = 256
    ft_method: str = "lora"
    ft_dir: str | None = None
    epochs: int = 1
    n_eval: int = 64
    n_pairs: int = 24
    exact: bool = False
    ks: tuple[int, ...] = (5, 10, 20)
    n_boot: int = 500
    seed: int = 0
    device: str | None = None
    out: str = "runs/shift"
    quick: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from interp.tasks import get_task

        get_task(self.task)
        if self.quick:
            self.shots, self.n_train, self.n_eval = min(self.shots, 2), 16, 8
            self.n_pairs, self.n_boot, self.epochs, self.ks = 6, 100, 1, (3, 5)
        for name in ("shots", "n_train", "n_eval", "n_pairs", "n_boot", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ft_method not in ("full", "lora"):
            raise ConfigError("ft_method must be full or lora")
        if self.ft_dir and not (Path(self.ft_dir) / "config.json").is_file():
            raise ConfigError(f"--ft-dir {self.ft_dir} is not a model directory")
        self.ks = tuple(self.ks)


def _load(config: ShiftConfig, spec: str) -> LoadedModel:
    return load_model(spec, device=config.device)


def stage_finetune(config: ShiftConfig, out: Path) -> str:
    if config.ft_dir:
        return config.ft_dir
    from interp.finetune import TrainConfig, train
    from interp.tasks import generate

    ft = out / "ft"
    if (ft / "train_config.json").is_file():
        return str(ft)
    examples = generate(config.task, config.n_train, seed=config.seed, split="train")
    train(_load(config, config.model), examples,
          TrainConfig(method=config.ft_method, epochs=config.epochs, seed=config.seed,
                      batch_size=min(8, config.n_train)), ft, progress=config.progress)
    return str(ft)


def demos_for(config: ShiftConfig):
    from interp.prompts import demo_pool, sample_demos

    return sample_demos(demo_pool(config.task, max(64, config.shots), seed=config.seed),
                        config.shots, seed=config.seed)


def stage_accuracy(config: ShiftConfig, out: Path, ft_spec: str) -> dict:
    path = out / "accuracy.json"
    if path.is_file():
        return json.loads(path.read_text())
    from interp.evaluate import evaluate

    kwargs = dict(n=config.n_eval, seed=config.seed, batch_size=16, progress=config.progress)
    base = evaluate(_load(config, config.model), config.task, shots=[0, config.shots], **kwargs)
    ft = evaluate(_load(config, ft_spec), config.task, shots=[0], **kwargs)
    rows = []
    for cond, result, shots in (("base-zs", base, 0), ("base-icl", base, config.shots),
                                ("ft-zs", ft, 0)):
        for r in result.rows:
            if r.shots == shots and r.split == "test":
                rows.append({"model_condition": cond, "query_condition": r.condition,
                             "shots": shots, "n_train": config.n_train if cond == "ft-zs" else 0,
                             "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high,
                             "n": r.n})
    path.write_text(json.dumps(rows, indent=2))
    return rows


def condition_pairs(config: ShiftConfig, tokenizer, icl: bool) -> list[dict]:
    from interp.analysis.pairs import task_pairs

    return task_pairs(config.task, config.n_pairs, seed=config.seed,
                      demos=demos_for(config) if icl else (), tokenizer=tokenizer)


def stage_scores(config: ShiftConfig, out: Path, ft_spec: str) -> dict:
    """Per condition: per-pair effects ``heads [L, H, n]``, ``mlp [L, n]`` (normalised by the
    mean clean-corrupt gap) and the pair ids."""
    from safetensors.torch import load_file, save_file

    from interp.analysis.pairs import tokenize_pairs

    path = out / "scores.safetensors"
    ids_path = out / "pair_ids.json"
    if path.is_file() and ids_path.is_file():
        flat = load_file(path)
        ids = json.loads(ids_path.read_text())
        return {c: {"heads": flat[f"{c}/heads"], "mlp": flat[f"{c}/mlp"],
                    "gap": flat[f"{c}/gap"], "ids": ids[c]} for c in CONDITIONS}
    result, ids = {}, {}
    bar = tqdm(CONDITIONS, desc="score conditions", disable=not config.progress)
    for cond in bar:
        model = _load(config, ft_spec if cond == "ft-zs" else config.model)
        pairs = condition_pairs(config, model.tokenizer, icl=cond == "base-icl")
        tokens = tokenize_pairs(model, pairs)
        heads, mlp, clean, corrupt = _condition_effects(model, tokens, config.exact)
        gap = (clean - corrupt).mean()
        if gap.abs() < 1e-3:  # no clean-corrupt difference to normalise by: keep logit units
            gap = torch.tensor(1.0)
        result[cond] = {"heads": heads / gap, "mlp": mlp / gap, "gap": torch.tensor([float(gap)]),
                        "ids": [p["id"] for p in pairs]}
        ids[cond] = result[cond]["ids"]
    save_file({f"{c}/{k}": v[k].contiguous()
               for c, v in result.items() for k in ("heads", "mlp", "gap")}, path)
    ids_path.write_text(json.dumps(ids))
    return result


def _condition_effects(model: LoadedModel, tokens: list[dict], exact: bool):
    """Per-pair effects (patched - corrupt) of every head ``[L, H, n]`` and MLP ``[L, n]``
    (summed over positions), and the clean and corrupt metrics ``[n]``."""
    from interp.analysis.attribution import attribution_components
    from interp.analysis.metrics import logit_diff
    from interp.analysis.patching import length_groups, patch_pairs

    if exact:
        heads = patch_pairs(model, tokens, "heads", "activation")
        mlp = patch_pairs(model, tokens, "mlp", "activation")
        return (heads.scores - heads.corrupt, (mlp.scores - mlp.corrupt).sum(1), heads.clean,
                heads.corrupt)
    groups = length_groups(tokens)
    heads, mlp = [None] * len(tokens), [None] * len(tokens)
    clean, corrupt = torch.empty(len(tokens)), torch.empty(len(tokens))
    for idx in groups.values():
        metric = logit_diff([tokens[i]["answer_id"] for i in idx],
                            [tokens[i]["foil_id"] for i in idx])
        out = attribution_components(
            model, torch.stack([tokens[i]["clean"] for i in idx]).to(model.device),
            torch.stack([tokens[i]["corrupt"] for i in idx]).to(model.device), metric,
            ("heads", "mlp"), with_metric=True)
        for j, i in enumerate(idx):
            heads[i], mlp[i] = out["heads"][..., j], out["mlp"][..., j].sum(1)
            clean[i], corrupt[i] = out["source"][j], out["target"][j]
    return torch.stack(heads, -1), torch.stack(mlp, -1), clean, corrupt


def _map(scores: dict, idx=None) -> ScoreMap:
    h, m = scores["heads"], scores["mlp"]
    if idx is not None:
        h, m = h[..., idx], m[..., idx]
    return ScoreMap(h.mean(-1), m.mean(-1))


def shared_order(scores: dict) -> dict[str, list[int]]:
    """Column indices of the pairs every condition has, in one common order."""
    common = set.intersection(*(set(scores[c]["ids"]) for c in CONDITIONS))
    order = sorted(common)
    if len(order) < 4:
        raise ConfigError("fewer than 4 counterfactual pairs are shared by all conditions")
    return {c: [scores[c]["ids"].index(i) for i in order] for c in CONDITIONS}


def compare_conditions(config: ShiftConfig, scores: dict) -> dict:
    """shift(ICL) and shift(FT) with bootstrap intervals over pairs and a split-half floor."""
    cols = shared_order(scores)
    n = len(cols["base-zs"])
    maps = {c: _map(scores[c], cols[c]) for c in CONDITIONS}
    point = {"icl": distances(maps["base-icl"], maps["base-zs"], config.ks),
             "ft": distances(maps["ft-zs"], maps["base-zs"], config.ks),
             "icl_vs_ft": distances(maps["base-icl"], maps["ft-zs"], config.ks)}
    rng = random.Random(config.seed)
    boot = {"icl": [], "ft": [], "diff": [], "floor": []}
    for _ in range(config.n_boot):
        pick = [rng.randrange(n) for _ in range(n)]
        m = {c: _map(scores[c], [cols[c][i] for i in pick]) for c in CONDITIONS}
        s_icl = distances(m["base-icl"], m["base-zs"], ())["shift"]
        s_ft = distances(m["ft-zs"], m["base-zs"], ())["shift"]
        boot["icl"].append(s_icl)
        boot["ft"].append(s_ft)
        boot["diff"].append(s_icl - s_ft)
    for _ in range(config.n_boot // 5 or 1):  # noise floor: two disjoint halves of base-zs
        perm = list(range(n))
        rng.shuffle(perm)
        a, b = perm[: n // 2], perm[n // 2:]
        boot["floor"].append(distances(_map(scores["base-zs"], [cols["base-zs"][i] for i in a]),
                                       _map(scores["base-zs"], [cols["base-zs"][i] for i in b]),
                                       ())["shift"])
    ci = {k: [float(torch.tensor(v).quantile(0.025)), float(torch.tensor(v).quantile(0.975))]
          for k, v in boot.items() if k != "floor"}
    floor = float(torch.tensor(boot["floor"]).mean())
    per_layer = {"icl": layer_shift(maps["base-icl"], maps["base-zs"]).tolist(),
                 "ft": layer_shift(maps["ft-zs"], maps["base-zs"]).tolist()}
    return {"n_pairs": n, "point": point, "ci95": ci, "noise_floor": floor,
            "per_layer_shift": per_layer, "maps": maps}


def faithfulness(config: ShiftConfig, ft_spec: str, maps: dict[str, ScoreMap]) -> dict:
    """Share of the clean-corrupt gap recovered by patching each condition's top-n components
    (own condition), and the ICL circuit run in the FT condition and the reverse."""
    from interp.analysis.metrics import logit_diff
    from interp.analysis.pairs import tokenize_pairs
    from interp.analysis.patching import length_groups, patch_set, run_metric, set_cache

    total = maps["base-zs"].flat.numel()
    sizes = sorted({s for s in (1, 2, 5, 10, 20) if s < total} | {max(config.ks)})
    runs = {cond: cond for cond in CONDITIONS}
    runs.update({"icl-circuit@ft-zs": "ft-zs", "ft-circuit@base-icl": "base-icl"})
    source = {"icl-circuit@ft-zs": "base-icl", "ft-circuit@base-icl": "ft-zs"}
    curves = {}
    models = {}
    for name, cond in tqdm(runs.items(), desc="faithfulness", disable=not config.progress):
        spec = ft_spec if cond == "ft-zs" else config.model
        model = models.get(spec) or models.setdefault(spec, _load(config, spec))
        tokens = tokenize_pairs(model, condition_pairs(config, model.tokenizer,
                                                       icl=cond == "base-icl"))
        groups = []
        for idx in length_groups(tokens).values():
            group = [tokens[i] for i in idx]
            clean = torch.stack([t["clean"] for t in group]).to(model.device)
            corrupt = torch.stack([t["corrupt"] for t in group]).to(model.device)
            metric = logit_diff([t["answer_id"] for t in group], [t["foil_id"] for t in group])
            k = run_metric(model, corrupt, metric)
            groups.append((clean, corrupt, metric, k, run_metric(model, clean, metric) - k,
                           set_cache(model, clean)))
        den = sum(float(group[4].sum()) for group in groups)
        circuit = maps[source.get(name, cond)]
        recovered = []
        for size in sizes:
            heads, mlps = components(circuit, top_k(circuit, size))
            num = sum(float((patch_set(model, clean, corrupt, metric, heads, mlps, cache)
                              - k).sum()) for clean, corrupt, metric, k, _, cache in groups)
            recovered.append(num / den if abs(den) > 1e-9 else float("nan"))
        curves[name] = {"sizes": sizes, "recovered": recovered}
    return curves


def verdict(comparison: dict) -> str:
    p, ci, floor = comparison["point"], comparison["ci95"], comparison["noise_floor"]
    s_icl, s_ft = p["icl"]["shift"], p["ft"]["shift"]
    lo, hi = ci["diff"]
    head = (f"shift(ICL) = {s_icl:.3f} [{ci['icl'][0]:.3f}, {ci['icl'][1]:.3f}], "
            f"shift(FT) = {s_ft:.3f} [{ci['ft'][0]:.3f}, {ci['ft'][1]:.3f}] (1 - Spearman of "
            f"the score maps against base-zs; split-half noise floor {floor:.3f}); "
            f"difference {s_icl - s_ft:+.3f} [{lo:+.3f}, {hi:+.3f}]. ")
    if lo > 0 and s_icl > floor:
        return head + "ICL shifted the circuit more than fine-tuning did on this model and task."
    if hi < 0 and s_ft > floor:
        return head + "Fine-tuning shifted the circuit more than ICL did on this model and task."
    return head + ("The difference is within the uncertainty: no clear evidence that ICL shifts "
                   "the circuit more than fine-tuning here.")


def run_shift(config: ShiftConfig) -> dict:
    """Run (or resume) every stage; returns the results dictionary and writes the report."""
    from interp.probes import attention_views, icl_heads_stage, logit_lens
    from interp.report import write_report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2,
                                                default=str))
    ft_spec = stage_finetune(config, out)
    accuracy = stage_accuracy(config, out, ft_spec)
    scores = stage_scores(config, out, ft_spec)
    comparison = compare_conditions(config, scores)
    maps = comparison.pop("maps")
    results_path = out / "results.json"
    cached = json.loads(results_path.read_text()) if results_path.is_file() else {}
    faith = cached.get("faithfulness") or faithfulness(config, ft_spec, maps)
    lens = cached.get("logit_lens") or logit_lens(config, ft_spec)
    icl_heads = cached.get("icl_heads") or icl_heads_stage(config, ft_spec, maps)
    views_path = out / "attention_views.json"
    if views_path.is_file():
        views = json.loads(views_path.read_text())
    else:
        views = attention_views(config, ft_spec, maps)
        views_path.write_text(json.dumps(views))
    results = {"config": dataclasses.asdict(config), "ft_model": ft_spec, "accuracy": accuracy,
               **comparison, "faithfulness": faith, "logit_lens": lens, "icl_heads": icl_heads,
               "verdict": verdict(comparison),
               "maps": {c: {"heads": m.heads.tolist(), "mlp": m.mlp.tolist()}
                        for c, m in maps.items()}}
    results_path.write_text(json.dumps(results, indent=2, default=str))
    _write_csvs(out, results)
    write_report(out, {**results, "attention_views": views}, config, ft_spec, maps)
    return results


def _write_csvs(out: Path, results: dict) -> None:
    import pandas as pd

    pd.DataFrame(results["accuracy"]).to_csv(out / "accuracy.csv", index=False)
    rows = []
    for name, d in results["point"].items():
        rows.append({"comparison": name, **d})
    pd.DataFrame(rows).to_csv(out / "shift.csv", index=False)
