"""``interp sweep``: a paper-style grid from a YAML config (see ``interp.sweep``)."""

from __future__ import annotations

from interp.errors import ConfigError
from interp.options import positive


def add_parser(sub):
    p = sub.add_parser("sweep", help="run a YAML grid of models x tasks x shots x training "
                                     "sizes x seeds; finished cells are skipped")
    p.add_argument("config", help="YAML sweep config (experiments/configs/*.yaml)")
    p.add_argument("--out", default=None, help="output directory (default: the config's out, "
                                               "else runs/sweep/<name>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--only", action="append", metavar="FIELD=VALUE",
                   help="run only matching cells, e.g. --only task=boolean --only kind=eval")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N (a deterministic partition of the cells; shards may "
                        "run on different machines into one shared --out)")
    p.add_argument("--list-cells", action="store_true", help="list the cells and whether each "
                                                             "is done, then stop")
    p.add_argument("--launcher", choices=("none", "submitit"), default="none",
                   help="submitit: run the shards as a job array")
    p.add_argument("--cluster", choices=("local", "slurm", "debug"), default="local",
                   help="submitit cluster (local processes, SLURM, or in this process)")
    p.add_argument("--jobs", type=positive(), default=2, help="submitit: number of shards")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--gpus-per-job", type=positive(), default=1)
    p.add_argument("--timeout-min", type=positive(), default=240)
    p.add_argument("--report-to", default="none",
                   choices=("none", "tensorboard", "wandb", "trackio", "mlflow"),
                   help="experiment tracker (offline by default)")
    return p


def run(args) -> int:
    from pathlib import Path

    import pandas as pd

    from interp.files import check_writable, now
    from interp.models import check_device
    from interp.provenance import write_provenance
    from interp.sweep import cells, done, load_sweep, parse_shard, run_sweep, submit

    sweep = load_sweep(args.config)
    shard = parse_shard(args.shard)
    only = {}
    for item in args.only or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ("kind", "model", "task", "seed", "shots", "n_train"):
            raise ConfigError(f"--only takes FIELD=VALUE with FIELD one of kind, model, task, "
                              f"seed, shots, n_train; got {item!r}")
        only[key] = value
    check_device(args.device)
    out = Path(args.out or sweep.out or f"runs/sweep/{sweep.name}")
    if args.list_cells:
        grid = cells(sweep)
        finished = {c.key for c in done(out, grid)}
        for c in grid:
            print(f"{'done' if c.key in finished else 'todo'}  {c.key}")
        print(f"{len(finished)} of {len(grid)} cells done")
        return 0
    check_writable(out, lock=False)   # shards of one sweep share --out; cells have locks
    started = now()
    if args.launcher == "submitit":
        written = submit(sweep, args.config, out, args.cluster, args.jobs, args.device,
                         args.slurm_partition, args.gpus_per_job, args.timeout_min, only,
                         args.report_to)
    else:
        written = run_sweep(sweep, out, device=args.device, progress=not args.quiet, only=only,
                            shard=shard, report_to=args.report_to)
    write_provenance(out, {**dict(vars(args)), "grid": len(cells(sweep))},
                     {m: m for m in sweep.models}, started)
    if "missing" in written:
        print(f"{written['missing']} cells of the grid are not done yet (other shards?); the "
              "combined table is written once every cell exists")
        return 0
    if "results" in written:
        table = pd.read_csv(written["results"])
        wide = table.pivot_table(index=["model", "task", "kind", "n_train", "shots"],
                                 columns="condition", values="accuracy", aggfunc="mean")
        print(wide.round(3).to_string())
    if "shift" in written:
        print(pd.read_csv(written["shift"]).round(3).to_string(index=False))
    print("\n" + ", ".join(str(p) for p in written.values()))
    return 0
