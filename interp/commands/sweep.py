"""``interp sweep``: a paper-style grid from a YAML config (see ``interp.sweep``)."""

from __future__ import annotations

from interp.errors import ConfigError


def add_parser(sub, model_args=None) -> None:
    p = sub.add_parser("sweep", help="run a YAML grid of models x tasks x shots x training "
                                     "sizes x seeds; finished cells are skipped")
    p.add_argument("config", help="YAML sweep config (experiments/configs/*.yaml)")
    p.add_argument("--out", default=None, help="output directory (default: the config's out, "
                                               "else runs/sweep/<name>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--only", action="append", metavar="FIELD=VALUE",
                   help="run only matching cells, e.g. --only task=boolean --only kind=eval")


def run(args) -> int:
    import pandas as pd

    from interp.sweep import Cell, load_sweep, run_sweep

    sweep = load_sweep(args.config)
    only = {}
    for item in args.only or []:
        key, sep, value = item.partition("=")
        if not sep or key not in Cell.__dataclass_fields__:
            raise ConfigError(f"--only takes FIELD=VALUE with FIELD one of "
                              f"{', '.join(Cell.__dataclass_fields__)}, got {item!r}")
        only[key] = value
    written = run_sweep(sweep, args.out, device=args.device, progress=not args.quiet, only=only)
    if "results" in written:
        table = pd.read_csv(written["results"])
        wide = table.pivot_table(index=["model", "task", "kind", "n_train", "shots"],
                                 columns="condition", values="accuracy", aggfunc="mean")
        print(wide.round(3).to_string())
    if "shift" in written:
        print(pd.read_csv(written["shift"])[["model", "task", "seed", "shift_icl", "shift_ft",
                                             "noise_floor"]].round(3).to_string(index=False))
    print("\n" + ", ".join(str(p) for p in written.values()))
    return 0
