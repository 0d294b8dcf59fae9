"""``interp data``: generate a task split as JSONL (and audit a family for surface cues)."""

from __future__ import annotations

from interp.errors import ConfigError
from interp.options import at_least, knobs


def add_parser(sub):
    p = sub.add_parser("data", help="generate a task split as JSONL")
    p.add_argument("--task", required=True)
    p.add_argument("--n", type=at_least(0), default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="train, demo, validation or test")
    p.add_argument("--control", action="store_true",
                   help="the control (misleading) condition: the shortcut does not apply")
    p.add_argument("--knob", action="append", metavar="KEY=VALUE",
                   help="task knob, e.g. --knob value_range=10 (repeatable)")
    p.add_argument("--audit", action="store_true",
                   help="instead of writing data, print the family's surface-cue audit")
    p.add_argument("--out", help="output .jsonl path")
    return p


def run(args) -> int:
    from interp.tasks import generate, write_jsonl

    if args.audit:
        import pandas as pd

        from interp.tasks.audit import audit

        table = pd.DataFrame(audit(args.task, n=args.n or 400, **knobs(args.knob)))
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return 0
    if not args.out:
        raise ConfigError("--out is required (or --audit)")
    from pathlib import Path

    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give the path of a .jsonl file")
    examples = generate(args.task, args.n, seed=args.seed, split=args.split,
                        pattern=not args.control, **knobs(args.knob))
    path = write_jsonl(examples, args.out)
    print(f"wrote {len(examples)} {args.task} examples ({args.split}, "
          f"{'control' if args.control else 'pattern'}) to {path}")
    return 0
