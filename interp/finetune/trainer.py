"""Full and LoRA fine-tuning with resumable checkpoints.

One loop for CPU, one GPU and many GPUs: :class:`accelerate.Accelerator` handles devices, bf16
autocast and gradient synchronisation (``accelerate launch`` with the configs in
``experiments/accelerate/`` adds FSDP or DeepSpeed ZeRO-3). The batch order of every step is
fixed by the seed, and a checkpoint holds the trainable weights, optimiser, scheduler and RNG
state, so a killed run started again with the same command ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import ConfigError, InterpError
from interp.finetune.data import batch_plan, collate, encode_example
from interp.models import LoadedModel
from interp.tasks import Example

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class TrainingError(InterpError):
    """Training cannot go on (for instance the loss stopped being finite)."""


@dataclass
class TrainConfig:
    method: str = "lora"                 # full | lora
    lr: float | None = None              # default 2e-4 (lora) / 2e-5 (full)
    epochs: int = 3
    max_steps: int | None = None         # optimiser steps; overrides epochs when set
    batch_size: int = 8
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
    lora_targets: tuple[str, ...] = LORA_TARGETS
    checkpoint_every: int = 50
    group_by_length: bool = False
    bf16: bool | None = None             # default: on CUDA
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in ("full", "lora"):
            raise ConfigError(f"method must be full or lora here, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is None:
            self.lr = 2e-4 if self.method == "lora" else 2e-5
        self.lora_targets = tuple(self.lora_targets)

    def fingerprint(self) -> str:
        """Identifies the run a checkpoint belongs to (everything that changes the weights)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if k not in ("checkpoint_every", "meta")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


PRESETS = {
    # The authors' protocol: full-parameter, whole-text loss, lr 1e-5 constant after 20 warmup
    # steps, no weight decay, effective batch 16, evaluated at step 100 (1,600 samples).
    "paper": dict(method="full", loss_on="text", lr=1e-5, schedule="constant", warmup_steps=20,
                  weight_decay=0.0, batch_size=4, grad_accum=4, max_steps=100, clip=1.0),
}


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

    present = {name.rsplit(".", 1)[-1] for name, _ in hf.named_modules()}
    targets = [t for t in config.lora_targets if t in present]
    if not targets:
        raise ConfigError(f"none of the LoRA targets {config.lora_targets} is in this model")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(hf, lora)


def _save_checkpoint(path: Path, net, optimizer, scheduler, step: int, config: TrainConfig):
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().cpu().contiguous() for n, p in net.named_parameters()
               if p.requires_grad}
    save_file(weights, tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step,
                                                   "fingerprint": config.fingerprint()}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # a kill mid-save leaves the previous checkpoint whole


def _load_checkpoint(path: Path, net, optimizer, scheduler, config: TrainConfig) -> int:
    from safetensors.torch import load_file

    progress = json.loads((path / "progress.json").read_text())
    if progress["fingerprint"] != config.fingerprint():
        raise ConfigError(f"{path} holds a checkpoint of a run with other settings; use another "
                          "--out or delete it")
    weights = load_file(path / "trainable.safetensors")
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(progress["step"])


def answer_loss(net, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions, unembedding only those: the same
    value as the model's own loss, without computing logits nobody is scored on."""
    import torch.nn.functional as F

    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    hidden = base.get_decoder()(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), labels[keep])


def total_steps(n_batches: int, config: TrainConfig) -> int:
    return config.max_steps or math.ceil(n_batches / config.grad_accum)


def train(model: LoadedModel, examples: Sequence[Example], config: TrainConfig | None = None,
          out: str | Path | None = None, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune ``model`` in place on ``examples`` (their zero-shot prompts and answers).

    With ``out``, writes ``out/checkpoint/`` every ``checkpoint_every`` steps (and resumes from
    it when present), ``out/train_log.jsonl`` (loss per step), and at the end the model as
    safetensors with its tokenizer and ``train_config.json`` (for LoRA the adapter goes to
    ``out/adapter/`` and ``out/`` holds the merged model), so ``load_model(out)`` loads it.
    Returns a summary (steps, final loss, tokens/s, seconds).
    """
    from accelerate import Accelerator
    from transformers import get_scheduler

    config = config or TrainConfig()
    if not examples:
        raise ConfigError("no training examples")
    torch.manual_seed(config.seed)
    tok = model.tokenizer
    seqs = [encode_example(tok, ex, config.header, config.loss_on) for ex in examples]
    cuda = str(model.device).startswith("cuda")
    bf16 = cuda if config.bf16 is None else config.bf16
    accel = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda)
    world, rank = accel.num_processes, accel.process_index
    per_step = config.batch_size * config.grad_accum
    epochs = config.epochs
    if config.max_steps:  # enough epochs for max_steps
        epochs = max(1, math.ceil(config.max_steps * per_step / len(seqs)))
    plan = batch_plan([len(s.ids) for s in seqs], config.batch_size, epochs, config.seed,
                      config.group_by_length)
    steps = total_steps(len(plan), config)
    if steps * config.grad_accum > len(plan):
        raise ConfigError(f"{steps} steps need {steps * config.grad_accum} batches; the data "
                          f"gives {len(plan)}")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    net = _trainable(model, config)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(SCHEDULES[config.schedule], optimizer,
                              num_warmup_steps=config.warmup_steps, num_training_steps=steps)
    out = Path(out) if out else None
    ckpt = out / "checkpoint" if out else None
    start = 0
    if ckpt is not None and (ckpt / "progress.json").is_file():
        start = _load_checkpoint(ckpt, net, optimizer, scheduler, config)
    net, optimizer = accel.prepare(net, optimizer)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "train_log.jsonl"
        kept = []
        if start and log_path.is_file():  # steps after the checkpoint are redone
            kept = [line for line in log_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start]
        log = open(log_path, "w")
        log.writelines(line + "\n" for line in kept)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    bar = tqdm(total=steps, initial=start, desc=f"train {config.method}", disable=not progress)
    began, tokens, loss_value = time.perf_counter(), 0, float("nan")
    try:
        for step in range(start, steps):
            total = 0.0
            for micro in range(config.grad_accum):
                idx = plan[step * config.grad_accum + micro]
                idx = idx[rank::world] or idx[:1]  # each process its share of the batch
                batch = {k: v.to(accel.device) for k, v in
                         collate([seqs[i] for i in idx], pad).items()}
                with accel.autocast():
                    if world == 1:
                        loss = answer_loss(accel.unwrap_model(net), batch) / config.grad_accum
                    else:  # through the wrapper, so gradients synchronise
                        loss = net(**batch).loss / config.grad_accum
                if not torch.isfinite(loss):
                    where = f"; the last good checkpoint is in {ckpt}" if ckpt else ""
                    raise TrainingError(f"loss became {loss.item()} at step {step + 1}{where}")
                accel.backward(loss)
                total += loss.item()
                tokens += int(batch["attention_mask"].sum())
            if config.clip:
                accel.clip_grad_norm_(params, config.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = total
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
            if out and accel.is_main_process:
                log.write(json.dumps({"step": step + 1, "loss": round(total, 6),
                                      "lr": scheduler.get_last_lr()[0],
                                      "seconds": round(time.perf_counter() - began, 2)}) + "\n")
                log.flush()
            if ckpt is not None and accel.is_main_process and (
                    (step + 1) % config.checkpoint_every == 0 or step + 1 == steps):
                _save_checkpoint(ckpt, accel.unwrap_model(net), optimizer, scheduler, step + 1,
                                 config)
            if on_step is not None:
                on_step(step + 1, total)
    finally:
        bar.close()
        if out:
            log.close()
    seconds = time.perf_counter() - began
    net = accel.unwrap_model(net)
    net.eval()
    if config.method == "lora":
        if out and accel.is_main_process:
            net.save_pretrained(out / "adapter")
        model.hf = net.merge_and_unload()
    for p in model.hf.parameters():
        p.requires_grad_(False)
    summary = {"method": config.method, "steps": steps, "resumed_from": start,
               "examples": len(seqs), "final_loss": loss_value, "seconds": round(seconds, 2),
               "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None}
    if out and accel.is_main_process:
        save_model(model, out)
        (out / "train_config.json").write_text(json.dumps(
            {"config": dataclasses.asdict(config), "base_model": model.spec, **summary},
            indent=2, default=str))
    return summary


def save_model(model: LoadedModel, out: str | Path) -> Path:
    """Weights (safetensors), config and tokenizer: a directory ``load_model`` accepts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf = model.hf
    hf.hf_quantizer = None  # a model loaded from GGUF is plain fp32 by now
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.save_pretrained(out, safe_serialization=True)
    model.tokenizer.save_pretrained(out)
    return out
