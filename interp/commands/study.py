"""``interp study``: the controlled experiment and its causal tests for many models x tasks,
summarised as a table of pre-registered claims."""

from __future__ import annotations

from interp.options import add_device, add_settings, comma_list, positive, settings_from

#: the shift settings a study does not take from its options: each cell sets task and out, and
#: causal tests are always on (probes: the study's own ``--probes``, off by default)
NOT_STUDY_SETTINGS = ("task", "out", "causal", "probes")


def add_parser(sub):
    from interp.shift.config import ShiftConfig, study_template

    p = sub.add_parser("study", help="models x tasks -> the shift experiment with causal tests, "
                                     "and a claims table (claims.csv, study.html)")
    p.add_argument("--models", type=comma_list(str, "model"), default=["smollm2-135m"],
                   help="comma list of model specs")
    p.add_argument("--tasks", type=comma_list(str, "task"), default=["boolean"],
                   help="comma list of tasks, or 'all'")
    add_device(p)
    add_settings(p, ShiftConfig, defaults=study_template(), skip=NOT_STUDY_SETTINGS)
    p.add_argument("--preflight", action="store_true",
                   help="measure base-zs and base-icl gaps and reliabilities first and skip cells "
                        "that cannot pass the gates")
    p.add_argument("--target-mdd", type=positive(float), default=None, metavar="X",
                   help="choose each cell's pairs from the preflight's variance so that the "
                        "primary contrast's minimum detectable difference reaches X (implies "
                        "--preflight; the estimated time is said)")
    p.add_argument("--probes", action="store_true", help="also the shift report's probes")
    p.add_argument("--out", default="runs/study", help="output directory (resumable)")
    return p


def run(args) -> int:
    from dataclasses import replace

    from interp.files import check_writable
    from interp.models import check_device
    from interp.shift.config import ShiftConfig, study_template
    from interp.study import StudyConfig, run_study
    from interp.tasks import TASKS

    tasks = list(TASKS) if args.tasks == ["all"] else args.tasks
    shift = replace(study_template(), **settings_from(args, ShiftConfig, skip=NOT_STUDY_SETTINGS),
                    probes=args.probes, device=args.device, dtype=args.dtype,
                    progress=not args.quiet)
    config = StudyConfig(models=args.models, tasks=tasks, shift=shift, preflight=args.preflight,
                         target_mdd=args.target_mdd, out=args.out)
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
