"""``interp eval``: accuracy sweep over shot counts, pattern and control, with baselines."""

from __future__ import annotations

from interp.errors import ConfigError
from interp.options import add_model, at_least, comma_list, knobs, positive


def add_parser(sub):
    p = sub.add_parser("eval", help="accuracy sweep over shot counts, pattern and control")
    add_model(p)
    p.add_argument("--task", default="all", help="task name, comma list, or 'all'")
    p.add_argument("--shots", type=comma_list(int, "shot count"), default=[0, 4],
                   help="e.g. 0,1,2,4,8,16 (nested demonstration sets)")
    p.add_argument("--n", type=positive(), default=100,
                   help="test queries per condition and shot count")
    p.add_argument("--n-validation", type=at_least(0), default=None,
                   help="validation queries that choose the shot count (default n/2 with several "
                        "ICL shot counts; 0: off)")
    p.add_argument("--scoring", type=comma_list(str, "scoring"), default=["likelihood"],
                   help="closed answers: likelihood (compare choices), generation (greedy, the "
                        "paper's protocol) or both: likelihood,generation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive(), default=8)
    p.add_argument("--no-cache", action="store_true", help="recompute the demonstrations per query")
    p.add_argument("--no-header", action="store_true", help="no instruction header")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--pool-size", type=positive(), default=256,
                   help="demonstration pool size; shots may not exceed it")
    p.add_argument("--knob", action="append", metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/eval", help="output directory")
    return p


def tasks_of(text: str) -> list[str]:
    from interp.tasks import TASKS, get_task

    names = list(TASKS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        get_task(name)
    return names


def run(args) -> int:
    import pandas as pd

    from interp.evaluate import SCORINGS, evaluate
    from interp.files import check_writable, now, write_csv
    from interp.models import check_device, load_model
    from interp.provenance import write_provenance

    started = now()
    tasks = tasks_of(args.task)
    if min(args.shots) < 0:
        raise ConfigError("--shots must be non-negative")
    if max(args.shots) > args.pool_size:  # checked before the model loads
        raise ConfigError(f"{max(args.shots)} shots asked but the demonstration pool holds only "
                          f"{args.pool_size} (--pool-size)")
    bad = [s for s in args.scoring if s not in SCORINGS]
    if bad:
        raise ConfigError(f"unknown scoring {bad[0]!r}; choose from {', '.join(SCORINGS)}")
    check_device(args.device)
    task_knobs = knobs(args.knob)
    out = check_writable(args.out)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    _check_budget(model, tasks, args)
    frames, paired = [], []
    for task in tasks:
        result = evaluate(model, task, shots=args.shots, n=args.n, seed=args.seed,
                          batch_size=args.batch_size, use_cache=not args.no_cache,
                          n_validation=args.n_validation, header=not args.no_header,
                          chat=args.chat, pool_size=args.pool_size,
                          progress=not args.quiet,
                          scoring=args.scoring, **task_knobs)
        result.save(out)  # each task is saved as soon as it is done
        frame = result.to_frame()
        frames.append(frame)
        paired.extend({"task": task, **row} for row in result.paired)
        _print(task, model.spec, args.n, frame, result)
    write_csv(out / "accuracy.csv", pd.concat(frames, ignore_index=True))
    if paired:
        write_csv(out / "paired.csv", pd.DataFrame(paired))
    write_provenance(out, vars_of(args), {"model": model}, started)
    print(f"\nresults in {out}/ (accuracy.csv, paired.csv, eval_<task>.json, "
          "predictions_<task>.jsonl, provenance.json)")
    return 0


def _check_budget(model, tasks: list[str], args) -> None:
    """Refuse (one line) an evaluation beyond the machine's time, from sample queries."""
    from interp.budget import Need, check, forward_seconds
    from interp.engine import encode
    from interp.prompts import choose_demos, prefix_text
    from interp.tasks import generate

    need = Need(f"evaluating {args.n:,} queries per cell")
    for task in tasks:
        query = max(len(encode(model.tokenizer, ex.input, first=False))
                    for ex in generate(task, 4, seed=args.seed, split="test"))
        prefix = len(encode(model.tokenizer, prefix_text(task, choose_demos(
            task, max(args.shots), seed=args.seed, pool_size=args.pool_size)), first=True))
        items = args.n * 2 * len(args.shots) * len(args.scoring)
        tokens = items * (query + (prefix if args.no_cache else 0)) + 2 * prefix * len(args.shots)
        need += Need(need.what, seconds=forward_seconds(model, tokens,
                                                        forwards=items / args.batch_size))
    check(need)


def vars_of(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


def _print(task: str, spec: str, n: int, frame, result) -> None:
    test = frame[frame.split == "test"]
    for scoring, part in test.groupby("scoring", sort=False):
        table = part.pivot(index="shots", columns="condition", values="accuracy")
        base = part.groupby("condition")[["chance", "majority"]].first()
        print(f"\n{task} ({spec}, n={n} per cell, exact match, {scoring})")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        print("  baselines: " + ", ".join(
            f"{c}: chance {r.chance:.3f}, majority {r.majority:.3f}" for c, r in base.iterrows()))
        flagged = part[part.below_chance]
        if len(flagged):
            print("  control accuracy below chance (shortcut use) at shots "
                  f"{sorted(flagged.shots.tolist())}")
    for row in result.paired:
        print(f"  McNemar {row['condition']} {row['shots']}-shot vs 0-shot: only k-shot right "
              f"{row['only_a']}, only 0-shot right {row['only_b']}, p = {row['p_value']:.3g}")
    sel = result.selection
    if "chosen_on_validation" in sel:
        print(f"  ICL shot count chosen on validation (headline): {sel['chosen_on_validation']}; "
              f"best on test (the paper's protocol): {sel['best_on_test']}")
