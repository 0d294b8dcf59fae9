"""``interp shift``: the controlled circuit-shift experiment (conditions, shams, verdict)."""

from __future__ import annotations

from interp.options import add_model, add_settings, knobs, settings_from


def add_parser(sub):
    p = sub.add_parser("shift", help="the circuit-shift experiment: ICL and fine-tuning against "
                                     "matched shams, with a verdict and an offline report")
    from interp.shift.config import ShiftConfig

    add_model(p)
    add_settings(p, ShiftConfig)    # every option is a ShiftConfig field (shift/config.py)
    p.add_argument("--knob", action="append", metavar="KEY=VALUE", help="task knob")
    return p


def config_from(args):
    from interp.shift import ShiftConfig

    return ShiftConfig(model=args.model, device=args.device, dtype=args.dtype,
                       progress=not args.quiet, knobs=knobs(args.knob),
                       **settings_from(args, ShiftConfig))


def run(args) -> int:
    from interp.files import check_writable
    from interp.models import check_device
    from interp.shift import run_shift

    config = config_from(args)
    check_device(args.device)
    check_writable(args.out)
    results = run_shift(config)
    print("\ncondition            pattern  control  gap      reliab.  gate  shift")
    for name, c in results["conditions"].items():
        shift = results["shift"].get(name, {}).get("estimate")
        print(f"  {name:<19}{_f(c['accuracy']['pattern']['estimate'])}"
              f"{_f(c['accuracy']['control']['estimate'])}{_f(c['gap']['estimate'])}"
              f"{_f(c['reliability']['estimate'])}{'pass ' if c['gate']['passed'] else 'fail '}"
              f"{_f(shift)}")
    print(f"\nverdict: {results['verdict_code']} (rule {results['verdict_rule']})")
    print(results["verdict"])
    print(f"\nreport: {config.out}/report.html (results.json, conditions.csv, shift.csv)")
    return 0


def _f(value) -> str:
    return f"{value:8.3f} " if isinstance(value, (int, float)) else "     -   "
