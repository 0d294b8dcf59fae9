"""The ``interp`` command. Library errors become one-line messages with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from interp import __version__
from interp.errors import ConfigError, InterpError

PLANNED: dict[str, str] = {}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _knobs(pairs: list[str] | None) -> dict:
    knobs = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--knob takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        knobs[key.strip()] = tuple(parsed) if isinstance(parsed, list) else parsed
    return knobs


def _tasks(text: str) -> list[str]:
    from interp.tasks import TASKS, get_task

    names = list(TASKS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        get_task(name)
    return names


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="model spec: smollm2-135m, gemma3-270m, tiny-random-llama, a directory, "
                        "a .gguf file or a HF id (default: smollm2-135m)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: by device)")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line error and exit code 2 as library errors."""

    def error(self, message: str):
        self.exit(2, f"interp: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="interp", description="Why does in-context learning beat fine-tuning? Measure it.")
    parser.add_argument("--version", action="version", version=f"interp {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="generate a task split as JSONL")
    data.add_argument("--task", required=True)
    data.add_argument("--n", type=int, default=200)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--split", default="test", help="train, demo, validation or test")
    data.add_argument("--control", action="store_true",
                      help="the control (misleading) condition: the shortcut does not apply")
    data.add_argument("--knob", action="append", metavar="KEY=VALUE",
                      help="task knob, e.g. --knob value_range=10 (repeatable)")
    data.add_argument("--out", required=True, help="output .jsonl path")

    ev = sub.add_parser("eval", help="accuracy sweep over shot counts, pattern and control")
    _model_args(ev)
    ev.add_argument("--task", default="all", help="task name, comma list, or 'all'")
    ev.add_argument("--shots", type=_int_list, default=[0, 4], help="e.g. 0,1,2,4,8,16")
    ev.add_argument("--n", type=int, default=100, help="test queries per condition and shot count")
    ev.add_argument("--n-validation", type=int, default=0,
                    help="validation queries for choosing the shot count honestly (0: off)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--no-cache", action="store_true", help="recompute the demonstrations per query")
    ev.add_argument("--no-header", action="store_true", help="no instruction header")
    ev.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    ev.add_argument("--pool-size", type=int, default=256,
                    help="demonstration pool size; shots may not exceed it")
    ev.add_argument("--knob", action="append", metavar="KEY=VALUE")
    ev.add_argument("--out", default="runs/eval", help="output directory")

    from interp.commands import align, finetune, patch, shift, sweep
    shift.add_parser(sub, _model_args)
    patch.add_parser(sub, _model_args)
    align.add_parser(sub, _model_args)
    finetune.add_parser(sub, _model_args, _int_list)
    sweep.add_parser(sub)

    for name, text in PLANNED.items():
        p = sub.add_parser(name, help=f"{text} (not in this release)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def cmd_data(args) -> int:
    from interp.tasks import generate, write_jsonl

    if args.n < 0:
        raise ConfigError(f"--n must be >= 0, got {args.n}")
    examples = generate(args.task, args.n, seed=args.seed, split=args.split,
                        pattern=not args.control, **_knobs(args.knob))
    path = write_jsonl(examples, args.out)
    print(f"wrote {len(examples)} {args.task} examples ({args.split}, "
          f"{'control' if args.control else 'pattern'}) to {path}")
    return 0


def cmd_eval(args) -> int:
    import pandas as pd

    from interp.evaluate import evaluate
    from interp.models import load_model

    tasks = _tasks(args.task)
    if args.n <= 0:
        raise ConfigError(f"--n must be > 0, got {args.n}")
    if min(args.shots) < 0:
        raise ConfigError("--shots must be non-negative")
    if max(args.shots) > args.pool_size:  # checked before the model loads
        raise ConfigError(f"{max(args.shots)} shots asked but the demonstration pool holds only "
                          f"{args.pool_size} (--pool-size)")
    knobs = _knobs(args.knob)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    out = Path(args.out)
    frames = []
    for task in tasks:
        result = evaluate(model, task, shots=args.shots, n=args.n, seed=args.seed,
                          batch_size=args.batch_size, use_cache=not args.no_cache,
                          n_validation=args.n_validation, header=not args.no_header,
                          chat=args.chat, pool_size=args.pool_size, progress=not args.quiet,
                          **knobs)
        result.save(out)  # each task is saved as soon as it is done
        frames.append(result.to_frame())
        sel = result.selection
        table = result.to_frame()
        table = table[table.split == "test"].pivot(index="shots", columns="condition",
                                                   values="accuracy")
        print(f"\n{task} ({model.spec}, n={args.n} per cell, exact match)")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        if "chosen_on_validation" in sel:
            print(f"  ICL best on test: {sel['best_on_test']}; chosen on validation: "
                  f"{sel['chosen_on_validation']}")
    combined = pd.concat(frames, ignore_index=True)
    combined.to_csv(out / "accuracy.csv", index=False)
    print(f"\nresults in {out}/ (accuracy.csv, eval_<task>.json, predictions_<task>.jsonl)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        if args.command == "data":
            return cmd_data(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command in ("patch", "shift", "align", "finetune", "sweep"):
            from importlib import import_module
            return import_module(f"interp.commands.{args.command}").run(args)
        raise InterpError(f"`interp {args.command}` is not available in this release yet")
    except InterpError as exc:
        print(f"interp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
