"""``interp study``: the controlled experiment and its causal tests for many models x tasks,
summarised as a table of pre-registered claims."""

from __future__ import annotations

from interp.options import add_device, at_least, comma_list, positive


def add_parser(sub):
    p = sub.add_parser("study", help="models x tasks -> the shift experiment with causal tests, "
                                     "and a claims table (claims.csv, study.html)")
    p.add_argument("--models", type=comma_list(str, "model"), default=["smollm2-135m"],
                   help="comma list of model specs")
    p.add_argument("--tasks", type=comma_list(str, "task"), default=["boolean"],
                   help="comma list of tasks, or 'all'")
    add_device(p)
    p.add_argument("--shots", type=positive(), default=4)
    p.add_argument("--n-train", type=positive(), default=64)
    p.add_argument("--n-eval", type=positive(), default=32)
    p.add_argument("--n-pairs", type=at_least(4), default=16)
    p.add_argument("--demo-seeds", type=positive(), default=5)
    p.add_argument("--ft-seeds", type=positive(), default=5)
    p.add_argument("--n-boot", type=positive(), default=500)
    p.add_argument("--preflight", action="store_true",
                   help="measure base-zs and base-icl gaps and reliabilities first and skip cells "
                        "that cannot pass the gates")
    p.add_argument("--probes", action="store_true", help="also the shift report's probes")
    p.add_argument("--quick", action="store_true", help="smallest settings (smoke test)")
    p.add_argument("--force", action="store_true",
                   help="recompute stages computed with other settings instead of stopping")
    p.add_argument("--out", default="runs/study", help="output directory (resumable)")
    return p


def run(args) -> int:
    from interp.files import check_writable
    from interp.models import check_device
    from interp.study import StudyConfig, run_study
    from interp.tasks import TASKS

    tasks = list(TASKS) if args.tasks == ["all"] else args.tasks
    config = StudyConfig(models=args.models, tasks=tasks, shots=args.shots,
                         n_train=args.n_train, n_eval=args.n_eval, n_pairs=args.n_pairs,
                         demo_seeds=args.demo_seeds, ft_seeds=args.ft_seeds, n_boot=args.n_boot,
                         quick=args.quick, preflight=args.preflight, probes=args.probes,
                         device=args.device, dtype=args.dtype, out=args.out, force=args.force,
                         progress=not args.quiet)
    check_device(args.device)
    check_writable(args.out)
    result = run_study(config)
    for row in result["claims"]:
        est = "" if row["estimate"] is None else f"{row['estimate']:+.3f} [{row['ci_low']:+.3f}, " \
                                                 f"{row['ci_high']:+.3f}]"
        print(f"{row['model']:<16} {row['task']:<11} {row['claim']:<27} {row['verdict']:<13} "
              f"{est}")
    print(f"\nclaims: {args.out}/claims.csv, report: {args.out}/study.html")
    return 0
