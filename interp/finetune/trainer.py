"""Full and LoRA fine-tuning with resumable checkpoints.

One loop for CPU, one GPU and many processes: :class:`accelerate.Accelerator` handles devices,
bf16 autocast and gradient synchronisation (``accelerate launch`` with the configs in
``experiments/accelerate/`` adds FSDP or DeepSpeed ZeRO-3). ``batch_size`` is the global batch:
each process takes its share of every batch, so one process and several give the same update.
The batch order of every step is fixed by the seed, and a checkpoint holds the trainable
weights, optimiser, scheduler and RNG states (CUDA too), so a killed run started again with the
same command ends with the same weights.

A run is identified by its fingerprint: the training settings, the base model and a hash of the
training data. A checkpoint or finished run with another fingerprint is never resumed; a
finished run with the same fingerprint is not redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.arch import head_logits
from interp.budget import Need, forward_seconds
from interp.errors import ConfigError, StaleResultsError, TrainingError
from interp.files import dumps, fingerprint, read_json, write_json
from interp.finetune.checkpoint import Parallel
from interp.finetune.data import IGNORE, batch_plan, collate, encode_example
from interp.finetune.deltas import delta_from_factors, difference, lora_factors
from interp.models import LoadedModel, strip_quantizer
from interp.tasks import Example

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class TrainConfig:
    method: str = "lora"                 # full | lora
    lr: float | None = None              # default 2e-4 (lora) / 2e-5 (full)
    epochs: int = 3
    max_steps: int | None = None         # optimiser steps; overrides epochs when set
    batch_size: int = 8                  # global batch (all processes together)
    grad_accum: int = 1
    schedule: str = "cosine"             # cosine | linear | constant (each after warmup)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    clip: float = 1.0                    # max gradient norm; 0 = off
    loss_on: str = "answer"              # answer | text
    header: bool = True
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None   # default: the architecture's projections
    checkpoint_every: int = 50
    group_by_length: bool = False
    bf16: bool | None = None             # default: on CUDA
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in ("full", "lora"):
            raise ConfigError(f"method must be full or lora here, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.loss_on not in ("answer", "text"):
            raise ConfigError(f"loss_on must be 'answer' or 'text', got {self.loss_on!r}")
        for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every", "lora_r",
                     "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ConfigError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        for name in ("warmup_steps", "weight_decay", "clip", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr is None:
            self.lr = 2e-4 if self.method == "lora" else 2e-5
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)

    def settings(self) -> dict:
        """Everything that changes the weights (not checkpoint frequency or notes)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("checkpoint_every", "meta")}


PRESETS = {
    # The authors' protocol: full-parameter, whole-text loss, lr 1e-5 constant after 20 warmup
    # steps, no weight decay, effective batch 16, evaluated at step 100 (1,600 samples).
    "paper": dict(method="full", loss_on="text", lr=1e-5, schedule="constant", warmup_steps=20,
                  weight_decay=0.0, batch_size=4, grad_accum=4, max_steps=100, clip=1.0),
}


def data_hash(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.task}\x00{ex.input}\x00{ex.target}\x01".encode())
    return digest.hexdigest()[:16]


def run_settings(model: LoadedModel | str, examples: Sequence[Example],
                 config: TrainConfig) -> dict:
    """What identifies a training run: settings, base model and data."""
    spec = model if isinstance(model, str) else model.spec
    return {"config": config.settings(), "base_model": spec,
            "tasks": sorted({ex.task for ex in examples}), "n_examples": len(examples),
            "data_hash": data_hash(examples)}


def _trainable(model: LoadedModel, config: TrainConfig):
    if model.has_bridge:
        raise ConfigError("this model has been wrapped in a TransformerBridge (which rewrites it "
                          "in place); load a fresh copy to fine-tune")
    hf = model.hf
    if config.method == "full":
        for p in hf.parameters():
            p.requires_grad_(True)
        return hf
    from peft import LoraConfig, get_peft_model

    wanted = config.lora_targets or model.adapter.lora_targets
    present = {name.rsplit(".", 1)[-1] for name, _ in hf.named_modules()}
    targets = [t for t in wanted if t in present]
    if not targets:
        raise ConfigError(f"none of the LoRA targets {tuple(wanted)} is in this model")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(hf, lora)


def answer_loss(net, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions, unembedding only those: the same
    value as the model's own loss, without computing logits nobody is scored on."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    hidden = base.base_model(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = head_logits(base, hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def total_steps(n_batches: int, config: TrainConfig) -> int:
    return config.max_steps or math.ceil(n_batches / config.grad_accum)


def training_need(model: LoadedModel, config: TrainConfig, n_examples: int, tokens: int,
                  what: str) -> Need:
    """What training ``config`` on ``n_examples`` of about ``tokens`` tokens would need: a lower
    bound on time (forward and backward: 3 forward-equivalents for full fine-tuning, 2 through
    LoRA's frozen weights) and the weights, optimiser state and one batch's activations."""
    per_step = config.batch_size * config.grad_accum
    batches = math.ceil(n_examples / config.batch_size) * config.epochs
    examples = total_steps(batches, config) * per_step
    full = config.method == "full"
    n_params = sum(p.numel() for p in model.hf.parameters())
    width = model.hf.config.hidden_size * model.n_layers
    return Need(what, bytes=4 * n_params * (4 if full else 1.5)
                + 64 * config.batch_size * tokens * width,
                seconds=forward_seconds(model, examples * tokens, forwards=examples,
                                        passes=3 if full else 2))


def finished_run(out: str | Path, key: str) -> dict | None:
    """The summary of a finished run in ``out`` with fingerprint ``key`` (None if there is none);
    a finished run with another fingerprint raises StaleResultsError."""
    record = read_json(Path(out) / "train_config.json")
    if record is None or not record.get("finished"):
        return None
    if record.get("fingerprint") != key:
        raise StaleResultsError(f"{out} holds a finished fine-tune with other settings or data; "
                                "rerun with --force to redo it, or use another --out")
    return record


def check_run_dir(out: str | Path, spec: str, examples: Sequence[Example],
                  config: TrainConfig) -> None:
    """Before any work: a one-line StaleResultsError when ``out`` holds a finished run or a
    checkpoint of other settings or data."""
    key = fingerprint(run_settings(spec, examples, config))
    finished_run(out, key)
    progress = read_json(Path(out) / "checkpoint" / "progress.json")
    if progress is not None and progress.get("fingerprint") != key:
        raise StaleResultsError(f"{out}/checkpoint holds a checkpoint of a run with other "
                                "settings or data; rerun with --force to start over, or use "
                                "another --out")


def _update(net, config: TrainConfig, initial: dict | None) -> dict:
    if config.method == "lora":
        return {"factors": lora_factors(net)}
    after = {n: p for n, p in net.named_parameters()}
    return {"delta": difference(after, initial)}


def train(model: LoadedModel, examples: Sequence[Example], config: TrainConfig | None = None,
          out: str | Path | None = None, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, snapshots: Sequence[int] = (),
          save_merged: bool = True, force: bool = False, tracker=None) -> dict:
    """Fine-tune ``model`` in place on ``examples`` (their zero-shot prompts and answers).

    With ``out``, writes ``out/checkpoint/`` every ``checkpoint_every`` steps (and resumes from
    it when its fingerprint matches), ``out/train_log.jsonl`` (loss per step), and at the end
    ``train_config.json`` (with ``fingerprint``, ``resumed_from`` and ``finished``), the LoRA
    adapter in ``out/adapter/`` and, with ``save_merged``, the merged model as safetensors with
    its tokenizer (so ``load_model(out)`` loads it). A finished run with the same fingerprint
    is not redone: its summary is returned with ``skipped`` and the files are left as they are.

    ``snapshots``: optimiser steps after which the weight update so far is recorded;
    ``summary["updates"][step]`` holds it (``{"factors": ...}`` for LoRA, ``{"delta": ...}``
    for full fine-tuning), the last step included whenever any snapshot is asked for.
    ``tracker``: an object with ``log(values, step)`` (see :mod:`interp.tracking`).
    """
    config = config or TrainConfig()
    if not examples:
        raise ConfigError("no training examples")
    run = Training(model, examples, config, Path(out) if out else None, snapshots, tracker)
    done = run.finished(force)
    if done is not None:
        return done
    run.prepare()
    bar = tqdm(total=run.steps, initial=run.start, desc=f"train {config.method}",
               disable=not progress or not run.main)
    try:
        for step in range(run.start, run.steps):
            loss = run.step(step)
            run.record(step + 1, loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(step + 1, loss)
    finally:
        bar.close()
        run.close_log()
    return run.finish(save_merged)


class Training:
    """One fine-tuning run, in the shape of Hugging Face's ``Trainer``: :meth:`prepare`
    (encoding, process group, batch plan, adapter, optimiser, resume, log), :meth:`step` (one
    optimiser step over ``grad_accum`` micro-batches), :meth:`record` (log, tracker, snapshot,
    checkpoint) and :meth:`finish` (merge and save). :func:`train` drives it."""

    def __init__(self, model: LoadedModel, examples: Sequence[Example], config: TrainConfig,
                 out: Path | None, snapshots: Sequence[int] = (), tracker=None):
        self.model, self.examples, self.config, self.out = model, examples, config, out
        self.snapshots, self.tracker = snapshots, tracker
        self.settings = run_settings(model, examples, config)
        self.key = fingerprint(self.settings)
        self.ckpt = out / "checkpoint" if out else None
        self.start, self.main, self.log = 0, True, None
        self.updates: dict[int, dict] = {}
        self.tokens, self.loss, self.began = 0, float("nan"), time.perf_counter()

    def finished(self, force: bool) -> dict | None:
        """The summary of this run finished before (``skipped``), else None; ``force`` forgets
        any earlier run in ``out``."""
        if self.out is None:
            return None
        if force:
            shutil.rmtree(self.ckpt, ignore_errors=True)
            (self.out / "train_config.json").unlink(missing_ok=True)
        done = finished_run(self.out, self.key)
        return None if done is None else {**done, "skipped": True}

    def prepare(self) -> None:
        from accelerate import Accelerator

        config, model = self.config, self.model
        torch.manual_seed(config.seed)
        self.seqs = [encode_example(model.tokenizer, ex, config.header, config.loss_on)
                     for ex in self.examples]
        cuda = str(model.device).startswith("cuda")
        bf16 = cuda if config.bf16 is None else config.bf16
        self.accel = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda)
        self.world, self.rank = self.accel.num_processes, self.accel.process_index
        self.main = self.accel.is_main_process
        if config.batch_size % self.world:
            raise ConfigError(f"batch size {config.batch_size} is the global batch and must "
                              f"divide evenly over {self.world} processes")
        self._plan_batches()
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        self.initial = ({n: p.detach().clone() for n, p in model.hf.named_parameters()}
                        if config.method == "full" and self.snapshots else None)
        self.parallel = Parallel(self.accel, cuda)
        self._prepare_optimiser()
        if self.ckpt is not None and (self.ckpt / "progress.json").is_file():
            self.start = self.parallel.load_checkpoint(self.ckpt, self.net, self.optimizer,
                                                       self.scheduler, self.key)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self._open_log()
        tok = model.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.wanted = ({min(max(1, int(s)), self.steps) for s in self.snapshots} | {self.steps}
                       if self.snapshots else set())
        self.began = time.perf_counter()

    def _plan_batches(self) -> None:
        config = self.config
        epochs = config.epochs
        if config.max_steps:  # enough epochs for max_steps
            per_step = config.batch_size * config.grad_accum
            epochs = max(1, math.ceil(config.max_steps * per_step / len(self.seqs)))
        self.plan = batch_plan([len(s.ids) for s in self.seqs], config.batch_size, epochs,
                               config.seed, config.group_by_length)
        self.steps = total_steps(len(self.plan), config)
        if self.steps * config.grad_accum > len(self.plan):
            raise ConfigError(f"{self.steps} steps need {self.steps * config.grad_accum} "
                              f"batches; the data gives {len(self.plan)}")

    def _prepare_optimiser(self) -> None:
        from transformers import get_scheduler

        config = self.config
        net = _trainable(self.model, config)
        net.train()
        self.net, self.optimizer = self.parallel.prepare(net, lambda m: torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad], lr=config.lr,
            weight_decay=config.weight_decay), self.model.hf, config.batch_size // self.world)
        self.scheduler = get_scheduler(SCHEDULES[config.schedule], self.optimizer,
                                       num_warmup_steps=config.warmup_steps,
                                       num_training_steps=self.steps)

    def _open_log(self) -> None:
        """``train_log.jsonl``, keeping the lines up to the step resumed from (the steps after
        the checkpoint are redone)."""
        if not (self.out and self.main):
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "train_log.jsonl"
        kept = []
        if self.start and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and _step_of(line) <= self.start]
        self.log = open(path, "w")
        self.log.writelines(line + "\n" for line in kept)

    def step(self, step: int) -> float:
        """Optimiser step ``step`` (0-based); returns its loss."""
        config, accel = self.config, self.accel
        total = 0.0
        for micro in range(config.grad_accum):
            idx = self.plan[step * config.grad_accum + micro][self.rank::self.world]
            batch = {k: v.to(accel.device) for k, v in
                     collate([self.seqs[i] for i in idx], self.pad).items()}
            with accel.autocast():
                if self.world == 1:
                    loss = answer_loss(self.parallel.unwrap(self.net), batch) / config.grad_accum
                else:  # through the wrapper, so gradients synchronise
                    loss = self.net(**batch).loss / config.grad_accum
            if not torch.isfinite(loss):
                where = f"; the last good checkpoint is in {self.ckpt}" if self.ckpt else ""
                raise TrainingError(f"loss became {loss.item()} at step {step + 1}{where}")
            accel.backward(loss)
            total += loss.item()
            self.tokens += int(batch["attention_mask"].sum())
        if config.clip:
            accel.clip_grad_norm_(self.params, config.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = total
        return total

    def record(self, step: int, loss: float) -> None:
        """After optimiser step ``step`` (1-based): the log line, the tracker, a snapshot of the
        update when one is wanted, a checkpoint every ``checkpoint_every`` steps and at the end."""
        lr = self.scheduler.get_last_lr()[0]
        if self.log is not None:
            self.log.write(dumps({"step": step, "loss": round(loss, 6), "lr": lr,
                                  "seconds": round(time.perf_counter() - self.began, 2)},
                                 indent=None) + "\n")
            self.log.flush()
        if self.tracker is not None and self.main:
            self.tracker.log({"train/loss": loss, "train/lr": lr}, step)
        if step in self.wanted:
            self.updates[step] = _update(self.parallel.unwrap(self.net), self.config,
                                         self.initial)
        if self.ckpt is not None and (step % self.config.checkpoint_every == 0
                                      or step == self.steps):
            self.parallel.save_checkpoint(self.ckpt, self.net, self.optimizer, self.scheduler,
                                          step, self.key)

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def finish(self, save_merged: bool) -> dict:
        """Merge a LoRA adapter into the weights, save (adapter, merged model, config) and
        return the summary."""
        seconds = time.perf_counter() - self.began
        out, main, model = self.out, self.main, self.model
        # every process takes part in gathering the weights (a collective under FSDP / ZeRO-3)
        gathered = (self.parallel.full_state(self.net) if self.world > 1 and out and save_merged
                    else None)
        net = self.parallel.unwrap(self.net)
        net.eval()
        if self.config.method == "lora":
            if out and main:
                net.save_pretrained(out / "adapter")
            if gathered is not None:    # merged by hand: the wrapped weights may be sharded
                gathered = merge_lora_state(gathered, net)
            model.hf = net.merge_and_unload()
        for p in model.hf.parameters():
            p.requires_grad_(False)
        summary = {"method": self.config.method, "steps": self.steps,
                   "resumed_from": self.start, "examples": len(self.seqs),
                   "final_loss": self.loss, "seconds": round(seconds, 2),
                   "tokens_per_s": round(self.tokens / seconds, 1) if seconds > 0 else None,
                   "processes": self.world}
        if out and main:
            if save_merged:
                save_model(model, out, gathered)
            write_json(out / "train_config.json",
                       {"config": dataclasses.asdict(self.config), "base_model": model.spec,
                        **self.settings, "fingerprint": self.key, **summary, "finished": True})
        summary["updates"] = self.updates
        return summary


def _step_of(line: str) -> int:
    return int(json.loads(line)["step"])


def merge_lora_state(state: dict, net) -> dict:
    """A peft model's gathered state dict with every LoRA update merged into its base weight,
    under the plain model's parameter names."""
    factors = {}
    for name, module in net.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.")
            factors[key + ".weight"] = {
                "A": state[f"{name}.lora_A.default.weight"].float(),
                "B": state[f"{name}.lora_B.default.weight"].float(),
                "scaling": float(module.scaling["default"]),
                "transpose": bool(getattr(module, "fan_in_fan_out", False))}
    deltas = delta_from_factors(factors)
    merged = {}
    for name, value in state.items():
        if ".lora_" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        merged[plain] = value + deltas[plain].to(value.dtype) if plain in deltas else value
    return merged


def save_model(model: LoadedModel, out: str | Path, state_dict: dict | None = None) -> Path:
    """Weights (safetensors), config and tokenizer: a directory ``load_model`` accepts.
    ``state_dict``: weights gathered from several processes, saved instead of the model's."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf = strip_quantizer(model.hf)   # a model loaded from GGUF is plain fp32 by now
    if state_dict is not None and getattr(hf.config, "tie_word_embeddings", False):
        tied = getattr(hf, "_tied_weights_keys", None) or []   # saved once, as HF does
        state_dict = {k: v for k, v in state_dict.items() if k not in tied}
    hf.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    model.tokenizer.save_pretrained(out)
    return out
