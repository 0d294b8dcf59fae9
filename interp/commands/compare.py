"""``interp compare``: recompute a shift run's comparison from its stored scores, no model."""

from __future__ import annotations

from interp.options import positive


def _margin(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--margin must be a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"--margin must be in [0, 1), got {value}")
    return value


def add_parser(sub):
    p = sub.add_parser("compare", help="recompute a shift run's shifts, effects, intervals and "
                                       "verdict from its stored per-pair scores (no model)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of `interp shift`")
    p.add_argument("--margin", type=_margin, default=None,
                   help="equivalence / minimal-effect margin (default: the run's)")
    p.add_argument("--n-boot", type=positive(), default=None,
                   help="pair resamples (default: the run's)")
    p.add_argument("--out", required=True, help="where results.json is written")
    return p


def run(args) -> int:
    from pathlib import Path

    from interp.errors import ConfigError
    from interp.files import check_writable, now, write_json
    from interp.provenance import write_provenance
    from interp.shift.reanalyse import reanalyse

    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"no such run directory: {args.run_dir}")
    started = now()
    results = reanalyse(args.run_dir, args.margin, args.n_boot)
    out = check_writable(args.out)
    write_json(out / "results.json", results)
    write_provenance(out, {"run_dir": args.run_dir, "margin": args.margin,
                           "n_boot": args.n_boot}, None, started)
    primary = results["effects"]["icl_minus_ft"]
    shown = ("undefined" if primary["estimate"] is None else
             f"{primary['estimate']:+.3f} [{primary['ci95'][0]:+.3f}, {primary['ci95'][1]:+.3f}]")
    print(f"icl - ft {shown}; verdict {results['verdict_code']} (rule {results['verdict_rule']})")
    print(f"wrote {out / 'results.json'}")
    return 0
