"""``interp finetune``: train (full, LoRA, gd-kv, lcgd) and evaluate zero-shot before and after."""

from __future__ import annotations

import dataclasses
import importlib.util
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
    p.add_argument("--report-to", default="none",
                   choices=("none", "tensorboard", "wandb", "trackio", "mlflow"),
                   help="experiment tracker for the loss curve (offline by default)")
    p.add_argument("--force", action="store_true",
                   help="redo a run whose directory holds one with other settings")
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


def _processes(args):
    """The process group (``accelerate launch``) as the trainer sees it: on CPUs with
    ``cpu=True``, so several processes are one group there too."""
    from accelerate import PartialState

    return PartialState(cpu=not _on_gpu(args.device))


def _device(args) -> str | None:
    """The device this process trains on: ``--device``, else, under ``accelerate launch`` on
    GPUs, this rank's own device."""
    if args.device:
        return args.device
    state = _processes(args)
    return str(state.device) if state.num_processes > 1 and _on_gpu(None) else None


def _on_gpu(device: str | None) -> bool:
    import torch

    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def _attn_for(device: str | None) -> str:
    if not _on_gpu(device):
        return "eager"
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def _check_budget(model, config, tasks: list[str], n: int, seed: int) -> None:
    from interp.budget import check
    from interp.engine import encode
    from interp.finetune.trainer import training_need
    from interp.tasks import generate

    tokens = max(len(encode(model.tokenizer, ex.input + " " + ex.target, first=True))
                 for task in tasks for ex in generate(task, 4, seed=seed, split="train"))
    check(training_need(model, config, n * len(tasks), tokens,
                        f"fine-tuning on {n * len(tasks):,} examples of {tokens} tokens"))


def _evaluate(model, tasks, args, label: str) -> dict:
    from interp.evaluate import evaluate

    out = {}
    for task in tasks:
        result = evaluate(model, task, shots=[0], n=args.n_eval, seed=args.seed,
                          batch_size=args.eval_batch_size, progress=not args.quiet)
        out[task] = {c: result.accuracy(c, 0) for c in ("pattern", "control")}
        out[task]["result"] = result
        print(f"  {label:>12} {task:<10} zero-shot accuracy: pattern "
              f"{out[task]['pattern']:.3f}, control {out[task]['control']:.3f}")
    return out


def run(args) -> int:
    try:
        return _run(args)
    finally:
        _leave_group()


def _leave_group() -> None:
    """Every process leaves the process group before it exits: a group still alive at
    interpreter teardown aborts the process ("terminate called without an active exception")
    while the main one is still evaluating."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(args) -> int:
    from interp.files import check_writable, now
    from interp.finetune.trainer import check_run_dir
    from interp.models import check_device, load_model
    from interp.provenance import write_provenance
    from interp.tasks import generate
    from interp.tracking import start as start_tracker

    started = now()
    gd, tasks, sizes, config = _plan(args)
    check_device(args.device)
    processes = _processes(args)
    main = processes.is_main_process         # only the main process evaluates and writes
    out = check_writable(args.out) if main else Path(args.out)
    device = _device(args)
    attn = _attn_for(device)
    base = None
    if main and not gd:   # sizes checked against memory and time before any data or training
        base = load_model(args.model, device=device, dtype=args.dtype, attn_implementation=attn)
        _check_budget(base, config, tasks, max(sizes), args.seed)
    data = {n: [ex for task in tasks for ex in generate(task, n, seed=args.seed, split="train",
                                                        pattern=True)] for n in sizes}
    if not gd and not args.force:   # a stale run directory stops us before any work
        for n in sizes:
            check_run_dir(_run_dir(out, sizes, n), args.model, data[n], config)
    tracker = start_tracker(args.report_to, out, f"finetune-{args.method}",
                            vars(args)) if main else None
    before = {}
    if not args.no_eval and main:
        print(f"base model {args.model}:")
        before = _evaluate(base or load_model(args.model, device=device, dtype=args.dtype,
                                              attn_implementation=attn), tasks, args, "before")
    del base
    rows = []
    for n in sizes:
        run_dir = _run_dir(out, sizes, n)
        model = _train_size(args, n, tasks[0], data[n], config, run_dir, device, attn, tracker,
                            main)
        if args.no_eval or not main:
            continue
        if processes.num_processes > 1:   # the trained weights may be sharded: reload
            model = load_model(str(run_dir), device=device, dtype=args.dtype)
        after = _evaluate(model, tasks, args, f"after n={n}")
        for task in tasks:
            after[task]["result"].save(run_dir)
            rows.append({"task": task, "n_train": n, "method": args.method,
                         **{f"before_{c}": before[task][c] for c in ("pattern", "control")},
                         **{f"after_{c}": after[task][c] for c in ("pattern", "control")}})
    if tracker is not None:
        tracker.finish()
    if not main:
        return 0
    _write_table(args, out, rows, config)
    write_provenance(out, dict(vars(args)), {"base": args.model},
                     started, processes=processes.num_processes)
    return 0


def _plan(args) -> tuple[bool, list[str], list[int], object]:
    """(layer-causal GD?, tasks, training sizes, TrainConfig or None), checked."""
    from interp.finetune import GD_METHODS
    from interp.tasks import get_task

    gd = args.method in GD_METHODS
    tasks = ([t.strip() for t in args.task.split(",") if t.strip()] if args.task else
             list(PAPER_TASKS) if args.preset else ["boolean"])
    for task in tasks:
        get_task(task)
    sizes = args.n_train or ([32] if gd else [400] if args.preset else [256])
    config = None if gd else build_config(args)
    if gd and len(tasks) > 1:
        raise ConfigError(f"{args.method} trains on one task's demonstrations; give one --task")
    return gd, tasks, sizes, config


def _run_dir(out: Path, sizes: list[int], n: int) -> Path:
    return out if len(sizes) == 1 else out / f"n{n}"


def _train_size(args, n: int, first_task: str, data, config, run_dir: Path, device, attn,
                tracker, main: bool):
    """Train a fresh copy of the base model on ``n`` examples per task (layer-causal GD: on
    ``n`` demonstrations of ``first_task``); returns it."""
    from interp.finetune import GD_METHODS, train, train_gd
    from interp.models import load_model
    from interp.prompts import choose_demos

    gd = args.method in GD_METHODS
    model = load_model(args.model, device=device, dtype=args.dtype if not gd else "float32",
                       attn_implementation=attn)
    if gd:
        demos = choose_demos(first_task, n, seed=args.seed, pool_size=max(256, n))
        summary = train_gd(model, demos, args.method, lr=args.lr or 1e-3,
                           out=run_dir if main else None, progress=not args.quiet)
    else:
        summary = train(model, data, config, run_dir, progress=not args.quiet,
                        force=args.force, tracker=tracker)
        if summary.get("skipped"):     # finished before with these settings: reuse it
            print(f"{run_dir}/ already holds this fine-tune (same settings and data); "
                  "nothing redone")
            return load_model(str(run_dir), device=device, dtype=args.dtype)
    print(f"trained {args.method} on {n} examples per task: {summary['steps']} steps "
          f"in {summary['seconds']} s -> {run_dir}/")
    return model


def _write_table(args, out: Path, rows: list[dict], config) -> None:
    import pandas as pd

    from interp.files import write_csv, write_json

    if not rows:
        return
    table = pd.DataFrame(rows)
    write_csv(out / "finetune_accuracy.csv", table)
    write_json(out / "finetune_accuracy.json",
               {"model": args.model, "config": dataclasses.asdict(config) if config else
                {"method": args.method, "lr": args.lr or 1e-3}, "rows": rows})
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nresults in {out}/ (finetune_accuracy.csv, model weights, train_log.jsonl)")
