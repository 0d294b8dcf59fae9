"""``interp shift``: the circuit-shift experiment, base vs ICL vs fine-tuned."""

from __future__ import annotations


def add_parser(sub, model_args) -> None:
    p = sub.add_parser("shift", help="the circuit-shift experiment: base, ICL and fine-tuned "
                                     "circuits compared, with an offline HTML report")
    model_args(p)
    p.add_argument("--task", default="boolean")
    p.add_argument("--shots", type=int, default=4, help="demonstrations for base-icl")
    p.add_argument("--n-train", type=int, default=256, help="fine-tuning samples for ft-zs")
    p.add_argument("--ft-method", choices=("lora", "full"), default="lora")
    p.add_argument("--ft-dir", default=None, help="use this fine-tuned model instead of training")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n-eval", type=int, default=64, help="test queries per accuracy cell")
    p.add_argument("--n-pairs", type=int, default=24, help="counterfactual pairs to score")
    p.add_argument("--exact", action="store_true",
                   help="activation patching instead of attribution patching")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples over pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smallest settings that still run every stage (smoke test)")
    p.add_argument("--out", default="runs/shift", help="output directory (resumable)")


def run(args) -> int:
    from interp.pipeline import ShiftConfig, run_shift

    config = ShiftConfig(model=args.model, task=args.task, shots=args.shots,
                         n_train=args.n_train, ft_method=args.ft_method, ft_dir=args.ft_dir,
                         epochs=args.epochs, n_eval=args.n_eval, n_pairs=args.n_pairs,
                         exact=args.exact, n_boot=args.n_boot, seed=args.seed,
                         device=args.device, out=args.out, quick=args.quick,
                         progress=not args.quiet)
    results = run_shift(config)
    print("\naccuracy (test queries):")
    for r in results["accuracy"]:
        print(f"  {r['model_condition']:>8} {r['query_condition']:<8} {r['accuracy']:.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    print(f"\n{results['verdict']}")
    print(f"\nreport: {config.out}/report.html (results.json, accuracy.csv, shift.csv)")
    return 0
