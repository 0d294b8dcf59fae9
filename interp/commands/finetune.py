"""``interp finetune``: train (full, LoRA, gd-kv, lcgd) and evaluate zero-shot before and after."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

from interp.errors import ConfigError
from interp.options import add_model, at_least, comma_list, positive

METHODS = ("full", "lora", "gd-kv", "lcgd")
PAPER_TASKS = ("expression", "code", "relation", "boolean")


def add_parser(sub):
    p = sub.add_parser("finetune", help="fine-tune a model (full, LoRA, gd-kv, layer-causal GD) "
                                        "and evaluate it zero-shot before and after")
    add_model(p)
    p.add_argument("--task", default=None,
                   help="task or comma list (a mixture); default boolean, or the paper's four "
                        "tasks with --preset paper")
    p.add_argument("--method", default="lora", choices=METHODS)
    p.add_argument("--n-train", type=comma_list(positive(), "size"), default=None,
                   help="training examples per task; a comma list trains one model per size "
                        "(default 256; 400 with --preset paper; demonstrations for gd-kv/lcgd: 32)")
    p.add_argument("--preset", choices=("paper",), default=None,
                   help="the authors' protocol: full FT, whole-text loss, lr 1e-5 constant after "
                        "20 warmup steps, batch 16, 100 steps on 400 examples per task")
    for flag, kind, text in (
            ("--lr", positive(float), "learning rate"),
            ("--epochs", positive(), "epochs (default 3 on GPU, 1 on CPU)"),
            ("--max-steps", positive(), "optimiser steps (overrides epochs)"),
            ("--batch-size", positive(), "global batch size, split over processes (default 8)"),
            ("--grad-accum", positive(), "gradient accumulation steps"),
            ("--warmup", at_least(0), "warmup steps"),
            ("--weight-decay", at_least(0.0, float), "AdamW weight decay"),
            ("--clip", at_least(0.0, float), "max gradient norm, 0 = off"),
            ("--lora-r", positive(), "LoRA rank (16)"), ("--lora-alpha", positive(),
                                                         "LoRA alpha (32)"),
            ("--lora-dropout", at_least(0.0, float), "LoRA dropout (0.05)"),
            ("--checkpoint-every", positive(), "steps between checkpoints (50)")):
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default=None)
    p.add_argument("--loss-on", choices=("answer", "text"), default=None,
                   help="loss on the answer tokens (default) or the whole text")
    p.add_argument("--lora-targets", default=None, help="comma list of module names")
    p.add_argument("--group-by-length", action="store_true", help="length-grouped batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=positive(), default=64, help="test queries per condition (64)")
    p.add_argument("--eval-batch-size", type=positive(), default=16)
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--out", default="runs/finetune", help="output directory")
    return p


def build_config(args):
    from interp.finetune import PRESETS, TrainConfig

    values = dict(PRESETS[args.preset]) if args.preset else {}
    if args.preset and args.method not in ("full", "lora"):
        raise ConfigError("--preset paper is a full fine-tuning protocol")
    if not args.preset:
        values["method"] = args.method
    names = {"lr": "lr", "epochs": "epochs", "max_steps": "max_steps",
             "batch_size": "batch_size", "grad_accum": "grad_accum", "warmup": "warmup_steps",
             "weight_decay": "weight_decay", "clip": "clip", "lora_r": "lora_r",
             "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
             "checkpoint_every": "checkpoint_every", "schedule": "schedule",
             "loss_on": "loss_on"}
    for arg, field in names.items():
        if getattr(args, arg) is not None:
            values[field] = getattr(args, arg)
    if args.lora_targets:
        values["lora_targets"] = tuple(t.strip() for t in args.lora_targets.split(","))
    if "epochs" not in values and not _on_gpu(args.device):
        values["epochs"] = 1  # CPU-sized default: ~7 s per LoRA step of 8 prompts on 2 cores
    values.update(seed=args.seed, group_by_length=args.group_by_length)
    return TrainConfig(**values)


def _on_gpu(device: str | None) -> bool:
    import torch

    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def _attn_for(device: str | None) -> str:
    if not _on_gpu(device):
        return "eager"
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def _evaluate(model, tasks, args, label: str) -> dict:
    from interp.evaluate import evaluate

    out = {}
    for task in tasks:
        result = evaluate(model, task, shots=[0], n=args.n_eval, seed=args.seed,
                          batch_size=args.eval_batch_size,
                          progress=not args.quiet)
        out[task] = {c: result.accuracy(c, 0) for c in ("pattern", "control")}
        out[task]["result"] = result
        print(f"  {label:>12} {task:<10} zero-shot accuracy: pattern "
              f"{out[task]['pattern']:.3f}, control {out[task]['control']:.3f}")
    return out


def run(args) -> int:
    from interp.finetune import GD_METHODS, train, train_gd
    from interp.models import load_model
    from interp.prompts import choose_demos
    from interp.tasks import generate, get_task

    gd = args.method in GD_METHODS
    tasks = ([t.strip() for t in args.task.split(",") if t.strip()] if args.task else
             list(PAPER_TASKS) if args.preset else ["boolean"])
    for task in tasks:
        get_task(task)
    sizes = args.n_train or ([32] if gd else [400] if args.preset else [256])
    if min(sizes) <= 0:
        raise ConfigError("--n-train must be positive")
    if args.n_eval <= 0:
        raise ConfigError("--n-eval must be positive")
    config = None if gd else build_config(args)
    if gd and len(tasks) > 1:
        raise ConfigError(f"{args.method} trains on one task's demonstrations; give one --task")
    attn = _attn_for(args.device)
    out = Path(args.out)
    before = {}
    if not args.no_eval:
        print(f"base model {args.model}:")
        before = _evaluate(load_model(args.model, device=args.device, dtype=args.dtype,
                                      attn_implementation=attn), tasks, args, "before")
    rows = []
    for n in sizes:
        run_dir = out if len(sizes) == 1 else out / f"n{n}"
        model = load_model(args.model, device=args.device, dtype=args.dtype,
                           attn_implementation=attn)
        if gd:
            demos = choose_demos(tasks[0], n, seed=args.seed, pool_size=max(256, n))
            summary = train_gd(model, demos, args.method, lr=args.lr or 1e-3, out=run_dir,
                               progress=not args.quiet)
        else:
            examples = [ex for task in tasks
                        for ex in generate(task, n, seed=args.seed, split="train", pattern=True)]
            summary = train(model, examples, config, run_dir, progress=not args.quiet)
        print(f"trained {args.method} on {n} examples per task: {summary['steps']} steps in "
              f"{summary['seconds']} s -> {run_dir}/")
        if args.no_eval:
            continue
        after = _evaluate(model, tasks, args, f"after n={n}")
        for task in tasks:
            after[task]["result"].save(run_dir)
            rows.append({"task": task, "n_train": n, "method": args.method,
                         **{f"before_{c}": before[task][c] for c in ("pattern", "control")},
                         **{f"after_{c}": after[task][c] for c in ("pattern", "control")}})
    if rows:
        import pandas as pd

        table = pd.DataFrame(rows)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "finetune_accuracy.csv", index=False)
        (out / "finetune_accuracy.json").write_text(json.dumps(
            {"model": args.model, "config": dataclasses.asdict(config) if config else
             {"method": args.method, "lr": args.lr or 1e-3}, "rows": rows}, indent=2,
            default=str))
        print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"\nresults in {out}/ (finetune_accuracy.csv, model weights, train_log.jsonl)")
    return 0
