"""``interp patch``: patch heads / residual stream / MLPs over a task's counterfactual pairs."""

from __future__ import annotations

import time
from pathlib import Path

from interp.errors import ConfigError
from interp.options import add_model, add_task_or_file, at_least, comma_list, positive

COMPONENT_CHOICES = ("heads", "heads_pos", "resid", "attn", "mlp")


def add_parser(sub):
    p = sub.add_parser("patch", help="activation / attribution patching of heads, residual "
                                     "stream and MLPs over counterfactual pairs")
    add_task_or_file(p, "build counterfactual pairs from this task family", "--pairs",
                     "JSONL of {clean, corrupt, answer, foil} rows")
    add_model(p)
    p.add_argument("--n", type=positive(), default=32, help="pairs built from --task (default 32)")
    p.add_argument("--pair-kind", default="counterfactual",
                   choices=("counterfactual", "separating"),
                   help="task pairs whose edit the shortcut and the rule agree on "
                        "(counterfactual) or disagree on (separating)")
    p.add_argument("--shots", type=at_least(0), default=0,
                   help="demonstrations shared by both prompts of each task pair (ICL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-header", action="store_true", help="no instruction header")
    p.add_argument("--component", type=comma_list(str, "component"), default=["heads"],
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
    p.add_argument("--ablate", type=comma_list(str, "mode"), default=[],
                   help="also head ablation importance: zero, mean")
    p.add_argument("--chunk", type=positive(), default=None, help="components per forward (auto)")
    p.add_argument("--n-boot", type=positive(), default=1000,
                   help="bootstrap resamples for the CIs")
    p.add_argument("--out", default="runs/patch", help="output directory")
    return p


def _components(names: list[str]) -> list[str]:
    bad = [c for c in names if c not in COMPONENT_CHOICES]
    if bad:
        raise ConfigError(f"unknown component {', '.join(bad)}; choose from "
                          f"{', '.join(COMPONENT_CHOICES)}")
    return names


def _text_pairs(args, tokenizer, rows: list[dict] | None = None) -> list[dict]:
    from interp.analysis.pairs import task_pairs
    from interp.prompts import choose_demos

    if rows is not None:
        return rows
    demos = choose_demos(args.task, args.shots, seed=args.seed)
    return task_pairs(args.task, args.n, seed=args.seed, demos=demos,
                      header=not args.no_header, tokenizer=tokenizer, kind=args.pair_kind)


def _check_budget(args, model, components: list[str], rows: list[dict] | None) -> None:
    """Refuse (one line) a request beyond the machine's memory or time, from two sample pairs."""
    from argparse import Namespace

    from interp.budget import GIB, Need, check, forward_seconds
    from interp.engine import encode

    n = len(rows) if rows is not None else args.n
    sample = rows[:2] if rows is not None else _text_pairs(Namespace(**{**vars(args), "n": 2}),
                                                         model.tokenizer)
    T = max(len(encode(model.tokenizer, p[side], first=True)) for p in sample
            for side in ("clean", "corrupt"))
    text = max(len(p["clean"]) + len(p["corrupt"]) for p in sample)
    L, H = model.n_layers, model.n_heads
    elems = {"heads": L * H, "heads_pos": L * H * T, "resid": L * T, "attn": L, "mlp": L}
    kept = sum(elems[c] for c in components) + (L * H if args.dla else 0) + L * H * len(args.ablate)
    activation = args.method == "activation" or args.source_model
    # per pair: clean and corrupt forwards; attribution adds a backward per component kind,
    # activation patching at least the final position through half the layers per component
    tokens = 2 * T + sum(elems[c] * (0.5 if activation else 2 * T) for c in components)
    need = Need(f"patching {n:,} pairs of {T} tokens",
                bytes=n * (4 * text + 16 * T + 12 * kept) + 16 * args.n_boot * n + GIB / 4,
                seconds=forward_seconds(model, n * tokens, forwards=n * (2 + len(components))))
    check(need)


def _check_args(args) -> list[dict] | None:
    """Every flag checked before the model loads; the rows of ``--pairs``, if given."""
    from interp.analysis.pairs import read_pairs

    _components(args.component)
    if args.source_model:
        if args.method == "attribution":
            raise ConfigError("--source-model runs activation patching; drop --method attribution")
        if args.dla or args.ablate:
            raise ConfigError("--dla and --ablate do not apply to cross-model patching")
    args.method = args.method or ("activation" if args.source_model else "attribution")
    if set(args.ablate) - {"zero", "mean"}:
        raise ConfigError(f"--ablate takes zero and/or mean, got {','.join(args.ablate)!r}")
    if args.pairs:
        return read_pairs(args.pairs)   # every row checked before the model loads
    from interp.tasks import get_task
    get_task(args.task)
    return None


def run(args) -> int:
    from interp.analysis.pairs import pair_metric, tokenize_pairs
    from interp.files import check_writable, dumps, now, write_text
    from interp.models import check_device, load_model

    started = now()
    rows = _check_args(args)
    check_device(args.device)
    out = check_writable(args.out)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.dla:
        model.adapter.require("dla")
    _check_budget(args, model, args.component, rows)
    text_pairs = _text_pairs(args, model.tokenizer, rows)
    tokens = tokenize_pairs(model, text_pairs)
    write_text(out / "pairs.jsonl", "".join(dumps(row, indent=None) + "\n" for row in text_pairs))

    def metric_for(idx):
        return pair_metric(tokens, idx, args.metric)

    if args.source_model:
        return _cross_model(args, model, tokens, args.component, metric_for, out)
    tensors, summary, figures = _patch(args, model, tokens, metric_for)
    _head_scores(args, model, tokens, tensors, figures)
    return _write(args, model, tokens, out, tensors, summary, figures, started)


def _patch(args, model, tokens, metric_for) -> tuple[dict, dict, list]:
    """Each ``--component`` patched over every pair: tensors, summary and heatmaps."""
    from interp.analysis.pairs import patch_pairs
    from interp.report.patch import patch_heatmap

    tensors, summary, figures = {}, {}, []
    for component in args.component:
        start = time.perf_counter()
        result = patch_pairs(model, tokens, component, args.method, args.direction,
                             metric=metric_for, chunk=args.chunk, progress=not args.quiet)
        tensors.update(result.tensors(n_boot=args.n_boot, seed=args.seed))
        summary[component] = {"seconds": round(time.perf_counter() - start, 2),
                              "shape": list(result.mean.shape), "positions": result.positions,
                              "top": result.top(10).to_dict("records")}
        summary.setdefault("baselines", result.baselines(args.n_boot, args.seed))
        figures.append(patch_heatmap(result, f"{component}: normalised {args.method} patching "
                                        f"effect ({args.direction}, n={result.n})"))
    return tensors, summary, figures


def _head_scores(args, model, tokens, tensors: dict, figures: list) -> None:
    """``--dla`` and ``--ablate``: per-head scores on the clean prompts, added to ``tensors``."""
    from interp.analysis.pairs import ablation_pairs, dla_pairs
    from interp.report.patch import ablation_heatmap, dla_heatmap

    if args.dla:
        dla = dla_pairs(model, tokens)
        tensors["dla_heads"], tensors["dla_heads_per_pair"] = dla.mean(-1), dla
        figures.append(dla_heatmap(dla))
    for mode in args.ablate:
        drop = ablation_pairs(model, tokens, mode, args.metric, args.chunk)
        tensors[f"ablate_{mode}_heads"] = drop.mean(-1)
        figures.append(ablation_heatmap(drop, mode))


def _write(args, model, tokens, out: Path, tensors: dict, summary: dict, figures: list,
           started: str) -> int:
    from interp.files import save_tensors, write_json
    from interp.plots import write_page
    from interp.provenance import write_provenance

    save_tensors(out / "scores.safetensors", {k: v.float() for k, v in tensors.items()})
    summary.update({"model": model.spec, "n_layers": model.n_layers, "n_heads": model.n_heads,
                    "n_pairs": len(tokens), "task": args.task, "pairs_file": args.pairs,
                    "shots": args.shots, "method": args.method, "direction": args.direction,
                    "metric": args.metric, "keys": sorted(tensors)})
    write_json(out / "summary.json", summary)
    write_provenance(out, dict(vars(args)), {"model": model}, started)
    page = write_page(out / "patching.html", f"Patching: {model.spec}, "
                      f"{args.task or args.pairs}", figures)
    base = summary["baselines"]
    print(f"{len(tokens)} pairs; clean {args.metric} {base['clean']['mean']:.3f}, "
          f"corrupt {base['corrupt']['mean']:.3f}")
    for component in args.component:
        top = summary[component]["top"][:5]
        print(f"{component} ({summary[component]['seconds']} s) largest effects (normalised): " +
              ", ".join(f"{r['component']}: {r['normalized']:.3f}" for r in top))
    print(f"results in {out}/ (scores.safetensors, summary.json, {page.name})")
    return 0


def _cross_model(args, model, tokens, components, metric_for, out: Path) -> int:
    """``--source-model``: source activations into --model ("source->model") and back."""
    from interp.analysis.cross_model import cross_model_patch
    from interp.files import save_tensors, write_json
    from interp.models import load_model
    from interp.plots import write_page
    from interp.report.patch import patch_heatmap

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
                "top": result.top(10).to_dict("records"),
                "metric": {"patched_into": float(result.corrupt.mean()),
                           "patched_from": float(result.clean.mean())}}
            figures.append(patch_heatmap(result, f"{frm.spec} -> {into.spec}: {component} "
                                            f"(1 = behaves like {frm.spec})"))
    save_tensors(out / "scores.safetensors", {k: v.float() for k, v in tensors.items()})
    summary.update({"n_pairs": len(tokens), "task": args.task, "shots": args.shots,
                    "metric": args.metric, "keys": sorted(tensors)})
    write_json(out / "summary.json", summary)
    page = write_page(out / "patching.html", f"Cross-model patching: {source.spec} <-> "
                      f"{model.spec}", figures)
    for key, info in summary.items():
        if isinstance(info, dict) and "top" in info:
            top = ", ".join(f"{r['component']}: {r['normalized']:.3f}" for r in info["top"][:5])
            print(f"{key} ({info['seconds']} s; metric {info['metric']['patched_into']:.3f} -> "
                  f"{info['metric']['patched_from']:.3f}): {top}")
    print(f"results in {out}/ (scores.safetensors, summary.json, {page.name})")
    return 0
