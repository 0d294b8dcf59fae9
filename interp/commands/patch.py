"""``interp patch``: patch heads / residual stream / MLPs over a task's counterfactual pairs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from interp.errors import ConfigError

COMPONENT_CHOICES = ("heads", "heads_pos", "resid", "attn", "mlp")


def add_parser(sub, model_args) -> None:
    p = sub.add_parser("patch", help="activation / attribution patching of heads, residual "
                                     "stream and MLPs over counterfactual pairs")
    model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="build counterfactual pairs from this task family")
    src.add_argument("--pairs", help="JSONL of {clean, corrupt, answer, foil} rows")
    p.add_argument("--n", type=int, default=32, help="pairs built from --task (default 32)")
    p.add_argument("--shots", type=int, default=0,
                   help="demonstrations shared by both prompts of each task pair (ICL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-header", action="store_true", help="no instruction header")
    p.add_argument("--component", default="heads",
                   help=f"comma list of {', '.join(COMPONENT_CHOICES)} (default heads)")
    p.add_argument("--method", default=None, choices=("activation", "attribution"),
                   help="exact activation patching or its first-order estimate (default "
                        "attribution; activation with --source-model)")
    p.add_argument("--source-model", default=None, metavar="SPEC",
                   help="cross-model patching: this model's activations (e.g. a fine-tuned "
                        "directory) patched into --model on the clean prompts, and back")
    p.add_argument("--direction", default="denoise", choices=("denoise", "noise"))
    p.add_argument("--metric", default="logit_diff", choices=("logit_diff", "logprob"))
    p.add_argument("--dla", action="store_true", help="also direct logit attribution per head")
    p.add_argument("--ablate", default="", help="also head ablation importance: zero, mean")
    p.add_argument("--chunk", type=int, default=None, help="components per forward (auto)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--out", default="runs/patch", help="output directory")


def _components(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in COMPONENT_CHOICES]
    if bad or not names:
        raise ConfigError(f"unknown component {', '.join(bad) or text!r}; choose from "
                          f"{', '.join(COMPONENT_CHOICES)}")
    return names


def _text_pairs(args, tokenizer) -> list[dict]:
    from interp.analysis.pairs import read_pairs, task_pairs
    from interp.prompts import demo_pool, sample_demos

    if args.pairs:
        if not Path(args.pairs).is_file():
            raise ConfigError(f"no such pairs file: {args.pairs}")
        return read_pairs(args.pairs)
    demos = sample_demos(demo_pool(args.task, max(64, args.shots)), args.shots, seed=args.seed)
    return task_pairs(args.task, args.n, seed=args.seed, demos=demos,
                      header=not args.no_header, tokenizer=tokenizer)


def _by_length(tokens: list[dict], fn) -> torch.Tensor:
    """Apply ``fn(clean [b, pos], idx)`` per token length; results ``[..., b]`` in pair order."""
    from interp.analysis.patching import length_groups

    parts, order = [], []
    for idx in length_groups(tokens).values():
        parts.append(fn(torch.stack([tokens[i]["clean"] for i in idx]), idx))
        order.extend(idx)
    out = torch.cat(parts, dim=-1)
    return out[..., torch.tensor(order).argsort()]


def _heatmap(result, title: str):
    """A PatchResult's normalised effects as a heatmap (heads_pos averaged over heads)."""
    from interp.plots import heatmap

    c = result.component
    values = result.normalized if c != "heads_pos" else result.normalized.mean(1)
    return heatmap(values, title, "head" if c == "heads" else "position",
                   x_labels=result.positions if c != "heads" else None, hover="normalised effect")


def run(args) -> int:
    from safetensors.torch import save_file

    from interp.analysis.metrics import answer_logprob, logit_diff
    from interp.analysis.pairs import tokenize_pairs
    from interp.analysis.patching import ablate, patch_pairs, run_metric
    from interp.models import load_model
    from interp.plots import heatmap, write_page

    components = _components(args.component)
    if args.source_model:
        if args.method == "attribution":
            raise ConfigError("--source-model runs activation patching; drop --method attribution")
        if args.dla or args.ablate:
            raise ConfigError("--dla and --ablate do not apply to cross-model patching")
    args.method = args.method or ("activation" if args.source_model else "attribution")
    modes = [m.strip() for m in args.ablate.split(",") if m.strip()]
    if set(modes) - {"zero", "mean"}:
        raise ConfigError(f"--ablate takes zero and/or mean, got {args.ablate!r}")
    if args.n <= 0 or args.shots < 0 or args.n_boot < 1:
        raise ConfigError("--n and --n-boot must be positive and --shots non-negative")
    if args.task:
        from interp.tasks import get_task
        get_task(args.task)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    text_pairs = _text_pairs(args, model.tokenizer)
    tokens = tokenize_pairs(model, text_pairs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.jsonl", "w") as f:
        for row in text_pairs:
            f.write(json.dumps(row) + "\n")

    def metric_for(idx):
        answers = [tokens[i]["answer_id"] for i in idx]
        if args.metric == "logprob":
            return answer_logprob(answers)
        return logit_diff(answers, [tokens[i]["foil_id"] for i in idx])

    tensors, summary, figures = {}, {}, []
    L, H = model.n_layers, model.n_heads
    if args.source_model:
        return _cross_model(args, model, tokens, components, metric_for, out)
    for component in components:
        start = time.perf_counter()
        result = patch_pairs(model, tokens, component, args.method, args.direction,
                             metric=metric_for, chunk=args.chunk, progress=not args.quiet)
        tensors.update(result.tensors(n_boot=args.n_boot, seed=args.seed))
        summary[component] = {"seconds": round(time.perf_counter() - start, 2),
                               "shape": list(result.mean.shape), "positions": result.positions,
                               "top_normalized": result.top(10)}
        summary.setdefault("baselines", result.baselines(args.n_boot, args.seed))
        figures.append(_heatmap(result, f"{component}: normalised {args.method} patching "
                                        f"effect ({args.direction}, n={result.n})"))
    if args.dla:
        from interp.analysis.attribution import direct_logit_attribution

        dla = _by_length(tokens, lambda c, idx: direct_logit_attribution(
            model, c.to(model.device), [tokens[i]["answer_id"] for i in idx],
            [tokens[i]["foil_id"] for i in idx])["heads"])
        tensors["dla_heads"], tensors["dla_heads_per_pair"] = dla.mean(-1), dla
        figures.append(heatmap(dla.mean(-1), "direct logit attribution per head (clean prompts)",
                               "head", hover="logit diff"))
    for mode in modes:
        def importance(c, idx, mode=mode):
            c = c.to(model.device)
            m = metric_for(idx)
            return run_metric(model, c, m) - ablate(model, c, m, mode, chunk=args.chunk)
        drop = _by_length(tokens, importance)
        tensors[f"ablate_{mode}_heads"] = drop.mean(-1)
        figures.append(heatmap(drop.mean(-1), f"{mode}-ablation importance per head "
                                              "(metric drop on clean prompts)", "head",
                               hover="metric drop"))
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, out / "scores.safetensors")
    summary.update({"model": model.spec, "n_layers": L, "n_heads": H, "n_pairs": len(tokens),
                    "task": args.task, "pairs_file": args.pairs, "shots": args.shots,
                    "method": args.method, "direction": args.direction, "metric": args.metric,
                    "keys": sorted(tensors)})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    page = write_page(out / "patching.html", f"Patching: {model.spec}, "
                      f"{args.task or args.pairs}", figures)
    base = summary["baselines"]
    print(f"{len(tokens)} pairs; clean {args.metric} {base['clean']['mean']:.3f}, "
          f"corrupt {base['corrupt']['mean']:.3f}")
    for component in components:
        top = summary[component]["top_normalized"][:5]
        print(f"{component} ({summary[component]['seconds']} s) top normalised effects: " +
              ", ".join(f"{tuple(r['index'])}: {r['value']:.3f}" for r in top))
    print(f"results in {out}/ (scores.safetensors, summary.json, {page.name})")
    return 0



def _cross_model(args, model, tokens, components, metric_for, out: Path) -> int:
    """``--source-model``: source activations into --model ("source->model") and back."""
    from safetensors.torch import save_file

    from interp.analysis.cross_model import cross_model_patch
    from interp.models import load_model
    from interp.plots import write_page

    source = load_model(args.source_model, device=args.device, dtype=args.dtype)
    tensors, summary, figures = {}, {"source": source.spec, "target": model.spec}, []
    for name, into, frm in (("source_into_model", model, source),
                            ("model_into_source", source, model)):
        for component in components:
            start = time.perf_counter()
            result = cross_model_patch(into, frm, tokens, component, metric_for, args.chunk,
                                       progress=not args.quiet)
            tensors.update({f"{name}/{k}": v for k, v in
                            result.tensors(n_boot=args.n_boot, seed=args.seed).items()})
            summary[f"{name}/{component}"] = {
                "seconds": round(time.perf_counter() - start, 2), "positions": result.positions,
                "top_normalized": result.top(10),
                "metric": {"patched_into": float(result.corrupt.mean()),
                           "patched_from": float(result.clean.mean())}}
            figures.append(_heatmap(result, f"{frm.spec} -> {into.spec}: {component} "
                                            f"(1 = behaves like {frm.spec})"))
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, out / "scores.safetensors")
    summary.update({"n_pairs": len(tokens), "task": args.task, "shots": args.shots,
                    "metric": args.metric, "keys": sorted(tensors)})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    page = write_page(out / "patching.html", f"Cross-model patching: {source.spec} <-> "
                      f"{model.spec}", figures)
    for key, info in summary.items():
        if isinstance(info, dict) and "top_normalized" in info:
            top = ", ".join(f"{tuple(r['index'])}: {r['value']:.3f}"
                            for r in info["top_normalized"][:5])
            print(f"{key} ({info['seconds']} s; metric {info['metric']['patched_into']:.3f} -> "
                  f"{info['metric']['patched_from']:.3f}): {top}")
    print(f"results in {out}/ (scores.safetensors, summary.json, {page.name})")
    return 0
