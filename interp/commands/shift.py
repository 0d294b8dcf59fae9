"""``interp shift``: the controlled circuit-shift experiment (conditions, shams, verdict)."""

from __future__ import annotations

from interp.options import add_model, at_least, comma_list, knobs, positive


def add_parser(sub):
    p = sub.add_parser("shift", help="the circuit-shift experiment: ICL and fine-tuning against "
                                     "matched shams, with a verdict and an offline report")
    add_model(p)
    p.add_argument("--task", default="boolean")
    p.add_argument("--shots", type=positive(), default=4, help="demonstrations for base-icl")
    p.add_argument("--n-train", type=positive(), default=128,
                   help="fine-tuning samples for ft-zs (and each fine-tuning sham)")
    p.add_argument("--ft-method", choices=("lora", "full"), default="lora")
    p.add_argument("--epochs", type=positive(), default=1)
    p.add_argument("--lr", type=positive(float), default=None)
    p.add_argument("--n-eval", type=positive(), default=64, help="test queries per accuracy cell")
    p.add_argument("--n-pairs", type=at_least(4), default=16,
                   help="counterfactual pairs per map (twice as many are scored: the second "
                        "half measures the noise floor)")
    p.add_argument("--dose-shots", type=comma_list(int, "shot count"), default=[1, 2, 4, 8],
                   help="ICL doses for the dose-response (base-icl's shots always included)")
    p.add_argument("--demo-seeds", type=positive(), default=1,
                   help="demonstration sets (hierarchical bootstrap when > 1)")
    p.add_argument("--ft-seeds", type=positive(), default=1,
                   help="fine-tuning seeds (hierarchical bootstrap when > 1)")
    p.add_argument("--n-boot", type=positive(), default=500, help="bootstrap resamples")
    p.add_argument("--margin", type=at_least(0.0, float), default=0.05,
                   help="equivalence margin of the verdict (distance units)")
    p.add_argument("--no-probes", action="store_true",
                   help="skip faithfulness, logit lens, attention views and ICL heads")
    p.add_argument("--causal", action="store_true",
                   help="also necessity / sufficiency tests of the most shifted components")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knob", action="append", metavar="KEY=VALUE", help="task knob")
    p.add_argument("--quick", action="store_true",
                   help="smallest settings that still run every stage (smoke test)")
    p.add_argument("--force", action="store_true",
                   help="recompute stages computed with other settings instead of stopping")
    p.add_argument("--out", default="runs/shift", help="output directory (resumable)")
    return p


def config_from(args):
    from interp.shift import ShiftConfig

    return ShiftConfig(model=args.model, task=args.task, shots=args.shots, n_train=args.n_train,
                       ft_method=args.ft_method, epochs=args.epochs, lr=args.lr,
                       n_eval=args.n_eval, n_pairs=args.n_pairs,
                       dose_shots=tuple(args.dose_shots), demo_seeds=args.demo_seeds,
                       ft_seeds=args.ft_seeds, n_boot=args.n_boot, margin=args.margin,
                       probes=not args.no_probes, causal=args.causal, seed=args.seed,
                       device=args.device, dtype=args.dtype, out=args.out, quick=args.quick,
                       force=args.force, progress=not args.quiet, knobs=knobs(args.knob))


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
