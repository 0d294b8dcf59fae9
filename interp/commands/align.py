"""``interp align``: ICL versus gradient descent, the metrics of *ICL and GD revisited*."""

from __future__ import annotations

from interp.errors import ConfigError
from interp.options import add_model, add_task_or_file, comma_list, positive


def add_parser(sub):
    p = sub.add_parser("align", help="ICL versus gradient-descent alignment metrics "
                                     "(SimAOU, SimAM, SimAM_delta, Rec2FTP, Kendall)")
    add_model(p)
    add_task_or_file(p, "a task with a closed answer set: boolean, parity, relation", "--data",
                     "JSONL of {input, target, choices} rows (queries and demos)")
    p.add_argument("--demo-data", default=None, help="JSONL of demonstrations (default: --data)")
    p.add_argument("--demos", type=int, default=32, help="demonstrations (ICL shots = GD steps)")
    p.add_argument("--method", default="gd-kv,lcgd", help="comma list of gd-kv, lcgd")
    p.add_argument("--seeds", type=int, default=3, help="demonstration sets (seeds 0..N-1)")
    p.add_argument("--n", type=int, default=32, help="test queries")
    p.add_argument("--lr", type=comma_list(positive(float), "rate"), default=[1e-3],
                   help="SGD learning rate; a comma list chooses each method's rate on "
                        "validation queries (e.g. 1e-4,1e-3,1e-2)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the random-update, untrained and embeddings-only baselines")
    p.add_argument("--out", default="runs/align", help="output directory")
    return p


def run(args) -> int:
    from interp.align import run_alignment, seed_summary
    from interp.files import check_writable, now
    from interp.models import check_device
    from interp.provenance import write_provenance
    from interp.report.align import write_results

    started = now()
    check_device(args.device)
    check_writable(args.out)

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--method needs at least one of gd-kv, lcgd")
    result = run_alignment(args.model, task=args.task, demos=args.demos, methods=methods,
                         seeds=args.seeds, n=args.n, lr=args.lr,
                         baselines=not args.no_baselines, data=args.data,
                         demo_data=args.demo_data, device=args.device, progress=not args.quiet)
    out = write_results(result, args.out, {"model": args.model, "task": args.task,
                                         "data": args.data, "demos": args.demos,
                                         "methods": methods, "seeds": args.seeds, "n": args.n,
                                         "lr": args.lr})
    mean, std = seed_summary(result["rows"])
    table = mean.map(lambda v: f"{v:.3f}") + " ± " + std.map(lambda v: f"{v:.3f}")
    table = table.where(mean.notna(), "")
    print(f"\nICL vs GD alignment, {args.model}, {args.task or args.data}: {args.demos} "
          f"demonstrations, {args.n} queries, mean ± std over {args.seeds} seeds; learning "
          f"rates {result['lr']}")
    print(table.to_string())
    write_provenance(out, dict(vars(args)), {"base": args.model}, started)
    print(f"\nresults in {out}/ (alignment.csv, alignment.json, alignment.html)")
    return 0
