"""``interp gaps``: is there a behaviour to explain? Clean-corrupt gaps per model and task."""

from __future__ import annotations

from interp.errors import ConfigError
from interp.options import add_device, at_least, comma_list, knobs, positive


def add_parser(sub):
    p = sub.add_parser("gaps", help="clean-corrupt gaps (zero-shot and k-shot) per model and "
                                    "task: where a circuit can be compared at all")
    p.add_argument("--models", type=comma_list(str, "model"), default=["smollm2-135m"])
    p.add_argument("--tasks", type=comma_list(str, "task"), default=["all"])
    add_device(p)
    p.add_argument("--shots", type=positive(), default=4)
    p.add_argument("--n-pairs", type=at_least(2), default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--default-knobs", action="store_true",
                   help="the families' default settings instead of their documented measurable "
                        "ones")
    p.add_argument("--knob", action="append", metavar="KEY=VALUE",
                   help="task knob (repeatable; with one task)")
    p.add_argument("--out", default=None, help="also write gaps.csv here")
    return p


def run(args) -> int:
    import pandas as pd

    from interp.files import check_writable, write_csv
    from interp.models import check_device, load_model
    from interp.shift.config import ShiftConfig
    from interp.shift.gaps import measure_gaps
    from interp.tasks import TASKS, get_task

    tasks = list(TASKS) if args.tasks == ["all"] else args.tasks
    for task in tasks:
        get_task(task)
    given = knobs(args.knob)
    if given and len(tasks) > 1:
        raise ConfigError("--knob applies to one task; give one --tasks")
    check_device(args.device)
    out = check_writable(args.out) if args.out else None
    rows = []
    for spec in args.models:
        model = load_model(spec, device=args.device, dtype=args.dtype)
        for task in tasks:
            chosen = given or ({} if args.default_knobs else dict(get_task(task).measurable_knobs))
            config = ShiftConfig(model=spec, task=task, shots=args.shots, n_pairs=args.n_pairs,
                                 seed=args.seed, knobs=chosen, progress=False)
            gaps = measure_gaps(model, config)
            row = {"model": spec, "task": task, "seed": args.seed,
                   "knobs": str(chosen) if chosen else "default"}
            for label, g in gaps.items():
                row[f"{label}_gap"] = g["estimate"]
                row[f"{label}_ci_low"], row[f"{label}_ci_high"] = g["ci95"]
            row["measurable"] = row["icl_ci_low"] > 0
            rows.append(row)
            print(f"{spec:<14} {task:<11} zero-shot {row['zero_shot_gap']:+.3f} "
                  f"[{row['zero_shot_ci_low']:+.3f}, {row['zero_shot_ci_high']:+.3f}]  "
                  f"{args.shots}-shot {row['icl_gap']:+.3f} [{row['icl_ci_low']:+.3f}, "
                  f"{row['icl_ci_high']:+.3f}]  {'measurable' if row['measurable'] else '-'}",
                  flush=True)
    if out is not None:
        write_csv(out / "gaps.csv", pd.DataFrame(rows))
    return 0
