"""``interp calibrate``: the comparison's coverage, bias and verdict rates on planted truths, and
the dose-response trend rule's false-positive rate and power."""

from __future__ import annotations

from interp.options import comma_list, positive


def add_parser(sub):
    p = sub.add_parser("calibrate", help="run the comparison on simulated scores with planted "
                                         "truths: interval coverage, bias, verdict rates")
    p.add_argument("--sims", type=positive(), default=200, help="simulations per scenario")
    p.add_argument("--n-boot", type=positive(), default=300, help="pair resamples per run")
    p.add_argument("--scenarios", type=comma_list(int, "scenario"), default=None,
                   help="scenario numbers (default: all; see the table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write calibration.csv and .json here")
    return p


COLUMNS = (("shift_coverage", "shift cov"), ("effect_coverage", "effect cov"),
           ("contrast_coverage", "contrast cov"), ("contrast_defined", "defined"),
           ("shift_bias", "shift bias"),
           ("contrast_bias", "contrast bias"), ("icl_more", "icl_more"), ("ft_more", "ft_more"),
           ("below_margin", "below margin"), ("no_difference", "no_difference"),
           ("reliability_ci_excludes_point", "rel. CI excludes point"))


def table(rows: list[dict]) -> str:
    """A Markdown table: each value with its Monte Carlo standard error."""
    head = "| # | scenario | sims | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for i, r in enumerate(rows):
        cells = []
        for key, _ in COLUMNS:
            v, se = r.get(key), r.get(key + "_mcse")
            cells.append("-" if v is None else f"{v:+.3f}" if "bias" in key else
                         f"{v:.3f} ± {se:.3f}" if se is not None else f"{v:.3f}")
        lines.append(f"| {r.get('number', i)} | {r['scenario']} | {r['n_sims']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def trend_table(rows: list[dict]) -> str:
    """The dose-response trend rule on planted truths: how often each interval's lower bound
    lies above 0 (at slope 0 a false positive; a 95 % interval allows 0.025)."""
    lines = ["| doses | seeds | slope | rule | sims | lower bound above 0 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['doses']} | {r['seeds']} | {r['slope']:.1f} | {r['rule']} | {r['sims']} | "
              f"{r['lower_above_0']:.3f} ± {r['mcse']:.3f} |" for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    import pandas as pd

    from interp.errors import ConfigError
    from interp.files import check_writable, write_csv, write_json
    from interp.shift.calibrate import SCENARIOS, calibrate
    from interp.shift.trend import planted_trends

    picked = args.scenarios if args.scenarios is not None else list(range(len(SCENARIOS)))
    bad = [i for i in picked if not 0 <= i < len(SCENARIOS)]
    if bad:
        raise ConfigError(f"no scenario {bad[0]}: choose from 0-{len(SCENARIOS) - 1}")
    out = check_writable(args.out) if args.out else None
    rows = calibrate([SCENARIOS[i] for i in picked], n_sims=args.sims, n_boot=args.n_boot,
                     seed=args.seed, progress=not getattr(args, "quiet", False))
    for i, row in zip(picked, rows):
        row["number"] = i
    print(table(rows))
    trends = planted_trends(sims=args.sims, seed=args.seed)
    print("\nDose-response trend (Kendall tau per seed, mean over seeds):\n")
    print(trend_table(trends))
    if out is not None:
        write_csv(out / "calibration.csv", pd.DataFrame(rows))
        write_json(out / "calibration.json", rows)
        write_csv(out / "trend_calibration.csv", pd.DataFrame(trends))
    return 0
