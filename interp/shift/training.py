"""The fine-tuning runs of a shift experiment: ft-zs, and the ft-other-task and ft-shuffled
shams, each per fine-tuning seed, with the same recipe, steps and seed; and ft-random-delta, a
random update with ft-zs's per-matrix rank and singular values (random orthonormal factors).

Each run trains a LoRA (or full) copy of the base model and keeps only its weight update
(:mod:`interp.finetune.deltas`); ft-zs and ft-other-task (its dose-matched sham) also at 25 %
and 50 % of their steps for the dose-response. A run whose update files are complete and whose
fingerprint matches is not redone.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import torch

from interp.engine import encode
from interp.errors import ConfigError
from interp.files import check_settings, read_json, write_json
from interp.finetune import TrainConfig, train
from interp.finetune.deltas import (
    Delta,
    activation_effect,
    delta_norms,
    final_inputs,
    load_update,
    random_like,
    save_update,
    total_norm,
)
from interp.models import LoadedModel
from interp.prompts import build_prompt
from interp.shift.config import DOSE_FRACTIONS, SHAMS, TRAINED, ShiftConfig
from interp.shift.table import SPECS, TABLE
from interp.tasks import Example, generate


def train_config(config: ShiftConfig, ft_seed: int) -> TrainConfig:
    return TrainConfig(method=config.ft_method, epochs=config.epochs, lr=config.lr,
                       seed=config.seed + ft_seed, batch_size=min(8, config.n_train),
                       warmup_steps=min(10, max(1, config.n_train // 32)))


def dose_steps(config: ShiftConfig) -> dict[float, int]:
    """Optimiser steps at each dose fraction of the fine-tuning run (all distinct)."""
    batch = min(8, config.n_train)
    total = math.ceil(config.n_train / batch) * config.epochs
    steps = {f: max(1, round(f * total)) for f in DOSE_FRACTIONS}
    if len(set(steps.values())) < len(steps):
        raise ConfigError(f"{total} fine-tuning steps cannot give {len(DOSE_FRACTIONS)} distinct "
                          "dose-response checkpoints; train on more samples (--n-train) or "
                          "epochs")
    return steps


def training_examples(config: ShiftConfig, condition: str, ft_seed: int
                      ) -> tuple[list[Example], float | None]:
    """The training data of one run (the other family's for an other-task condition) and, for
    ft-shuffled, the share of labels kept."""
    task = config.other_task if SPECS[condition].other_task else config.task
    knobs = config.knobs if task == config.task else {}
    examples = generate(task, config.n_train, seed=config.seed + ft_seed, split="train",
                        pattern=True, **knobs)
    return TRAINING_DATA[condition](config, examples, ft_seed)


def _as_generated(config: ShiftConfig, examples: list[Example], ft_seed: int):
    return examples, None


def _shuffled_labels(config: ShiftConfig, examples: list[Example], ft_seed: int):
    targets = [ex.target for ex in examples]
    random.Random(f"ft-shuffled|{config.seed}|{ft_seed}").shuffle(targets)
    agreement = sum(t == ex.target for t, ex in zip(targets, examples)) / len(examples)
    return [replace(ex, target=t) for ex, t in zip(examples, targets)], agreement


def _random_delta(updates: dict[str, Delta], config: ShiftConfig, s: int) -> Delta:
    return random_like(updates[f"ft-zs/{s}"], seed=config.seed + s)


#: each trained condition's training data from its generated examples: (examples, label
#: agreement or None)
TRAINING_DATA = {"ft-zs": _as_generated, "ft-other-task": _as_generated,
                 "ft-shuffled": _shuffled_labels}
#: each fine-tuning condition without a run of its own: its update from the trained ones
UPDATE_BUILDERS = {"ft-random-delta": _random_delta}


def _trained_run(config: ShiftConfig, template: LoadedModel, out: Path, condition: str, s: int,
                 wanted: list[int], force: bool) -> tuple[dict[int, Delta], dict]:
    """One trained condition's updates at the ``wanted`` steps (loaded when complete and
    fingerprinted alike, else trained) and its ``updates.json`` record (with per-matrix norms)."""
    run_dir = out / "ft" / f"{condition}-{s}"
    examples, agreement = training_examples(config, condition, s)
    settings = config.ft_settings(condition, s)
    record = read_json(run_dir / "updates.json")
    if check_settings(run_dir / "updates.json", record and record.get("settings"), settings,
                      force):
        loaded = {k: load_update(run_dir / f"update@{k}") for k in wanted}
        if all(v is not None for v in loaded.values()):
            if "delta_norms" not in record:       # a record from before norms were kept
                record["delta_norms"] = {str(k): delta_norms(d) for k, d in loaded.items()}
                write_json(run_dir / "updates.json", record)
            return loaded, record
    summary = train(template.copy(), examples, train_config(config, s), run_dir,
                    progress=config.progress, snapshots=wanted, save_merged=False, force=force)
    if summary.get("skipped") or set(summary["updates"]) != set(wanted):
        # finished (or resumed past a snapshot) without every update: redo
        summary = train(template.copy(), examples, train_config(config, s), run_dir,
                        progress=config.progress, snapshots=wanted, save_merged=False,
                        force=True)
    for k, update in summary["updates"].items():
        save_update(run_dir / f"update@{k}", update)
    loaded = {k: load_update(run_dir / f"update@{k}") for k in wanted}
    record = {"settings": settings, "steps": wanted,
              "summary": {k: v for k, v in summary.items() if k != "updates"},
              "label_agreement": agreement,
              "delta_norms": {str(k): delta_norms(d) for k, d in loaded.items()}}
    write_json(run_dir / "updates.json", record)
    return loaded, record


def effect_prompts(config: ShiftConfig, tokenizer, n: int = 16) -> list[torch.Tensor]:
    """Zero-shot test prompts of the task (token ids) on which an update's reach is measured."""
    queries = generate(config.task, n, seed=config.seed + 11, split="test", pattern=True,
                       **config.knobs)
    return [torch.tensor(encode(tokenizer, build_prompt(q, []).text, first=True))
            for q in queries]


#: trained conditions kept at every dose fraction: ft-zs and its primary sham (dose-matched)
DOSED = ("ft-zs", SHAMS["ft-zs"].primary)


def train_updates(config: ShiftConfig, template: LoadedModel, out: Path, force: bool = False
                  ) -> tuple[dict[str, Delta], dict]:
    """Weight updates by key (``ft-zs/0``, ``ft-zs/0@4``, ``ft-other-task/0``, ...,
    ``ft-random-delta/0``) and what each recorded (steps, label agreement, per-matrix rank,
    Frobenius and spectral norms, and ``||dW x||`` on test prompts), keyed alike."""
    steps = dose_steps(config)
    updates: dict[str, Delta] = {}
    info: dict[str, dict] = {}
    for s in range(config.ft_seeds):
        for condition in TRAINED:
            wanted = (sorted(set(steps.values())) if condition in DOSED
                      else [max(steps.values())])
            loaded, record = _trained_run(config, template, out, condition, s, wanted, force)
            updates[f"{condition}/{s}"] = loaded[max(wanted)]
            info[f"{condition}/{s}"] = {
                "steps": max(wanted), "label_agreement": record.get("label_agreement"),
                "final_loss": record["summary"].get("final_loss"),
                "delta_norms": record["delta_norms"][str(max(wanted))]}
            updates.update({f"{condition}/{s}@{k}": loaded[k] for k in wanted})
            info.update({f"{condition}/{s}@{k}": {"steps": k,
                                                  "delta_norms": record["delta_norms"][str(k)]}
                         for k in wanted[:-1]})          # the final one is keyed without @
        for spec in TABLE:
            if spec.arm == "ft" and not spec.trained:
                delta = UPDATE_BUILDERS[spec.name](updates, config, s)
                updates[f"{spec.name}/{s}"] = delta
                info[f"{spec.name}/{s}"] = {"delta_norms": delta_norms(delta)}
    _add_reach(config, template, updates, info)
    return updates, {"runs": info, "dose_steps": steps}


def _add_reach(config: ShiftConfig, template: LoadedModel, updates: dict[str, Delta],
               info: dict[str, dict]) -> None:
    """Each recorded update's total norm and its mean ``||dW x||`` on the test prompts."""
    names = {name for delta in updates.values() for name in delta}
    inputs = final_inputs(template.hf, names, effect_prompts(config, template.tokenizer))
    for key, record in info.items():
        record["delta_w_norm"] = total_norm(updates[key])
        record["activation_effect"] = activation_effect(inputs, updates[key])
