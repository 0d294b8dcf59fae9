"""The gradient-descent baselines of *In-context learning and gradient descent revisited*
(Deutch et al., 2024), following Dai et al. (2023).

- ``gd-kv``: SGD, one epoch, one step per demonstration in prompt order (batch 1), causal-LM
  loss on the formatted demonstration, only the attention key and value projections updated.
- ``lcgd`` (layer-causal GD): the same, but every layer's input is detached and every layer's
  output goes through the frozen final norm and unembedding to its own early-exit next-token
  loss; the loss is the sum over layers. Layer l's K/V weights thus learn only from layer l's
  prediction given what shallower layers computed, as ICL's update to layer l can only depend on
  shallower layers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.arch import kv_parameters, resolve, unembed
from interp.arch import layers as decoder_layers
from interp.engine import encode
from interp.errors import ConfigError
from interp.files import dumps, write_json, write_text
from interp.finetune.data import encode_demo
from interp.finetune.trainer import save_model
from interp.models import LoadedModel
from interp.prompts import format_demo
from interp.tasks import Example

GD_METHODS = ("gd-kv", "lcgd")


def _query_hooks(model: LoadedModel, store: list[list[torch.Tensor]]) -> list:
    """Hooks keeping each layer's query projection output ``[tokens, head, d_head]``."""
    path = model.adapter.q_proj
    handles = []
    for l, layer in enumerate(decoder_layers(model.hf)):
        def keep(module, args, output, l=l):
            store[l].append(output[0].detach().float().cpu().reshape(
                output.shape[1], model.n_heads, -1))
        handles.append(resolve(layer, path).register_forward_hook(keep))
    return handles


def causal_lm_loss(hf, ids: torch.Tensor) -> torch.Tensor:
    return hf(input_ids=ids, labels=ids).loss


def _detach_input(module, args, kwargs):
    if args:
        return (args[0].detach(), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}


def layer_causal_loss(hf, ids: torch.Tensor) -> torch.Tensor:
    """Sum over layers of the early-exit next-token loss, each layer's input detached.

    The model's own forward runs (any architecture with an adapter); a pre-hook on every
    decoder layer detaches its input and a hook keeps its output, which then goes through the
    frozen final norm and unembedding."""
    outs: list[torch.Tensor] = []

    def keep(module, args, kwargs, output):
        outs.append((output[0] if isinstance(output, tuple) else output)[:, :-1])

    handles = []
    for layer in decoder_layers(hf):
        handles.append(layer.register_forward_pre_hook(_detach_input, with_kwargs=True))
        handles.append(layer.register_forward_hook(keep, with_kwargs=True))
    try:
        hf.base_model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return _early_exit_loss(hf, outs, ids[:, 1:])


def _early_exit_loss(hf, outs: list[torch.Tensor], targets: torch.Tensor,
                     max_rows: int = 4096) -> torch.Tensor:
    """Sum over layers of the mean next-token cross-entropy of each layer's output through the
    final norm and unembedding. Layers are unembedded together, ``max_rows`` positions per
    matmul (measured on SmolLM2, 2 CPU cores: ~2.5 s per lcgd step against ~4.2 s with one
    matmul per layer; same result)."""
    rows = targets.numel()
    per = max(1, max_rows // rows)
    total = 0.0
    for i in range(0, len(outs), per):
        chunk = torch.stack(outs[i:i + per])                     # [layers, batch, pos, d]
        logits = unembed(hf, chunk).float()
        flat = targets.reshape(-1).repeat(chunk.shape[0])
        total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat,
                                        reduction="sum") / rows
    return total


def gd_loss(hf, ids: torch.Tensor, method: str) -> torch.Tensor:
    if method == "gd-kv":
        return causal_lm_loss(hf, ids)
    if method == "lcgd":
        return layer_causal_loss(hf, ids)
    raise ConfigError(f"method must be one of {', '.join(GD_METHODS)}, got {method!r}")


def train_gd(model: LoadedModel, demos: Sequence[Example], method: str = "lcgd",
             lr: float = 1e-3, out: str | Path | None = None, progress: bool = True,
             record_queries: bool = False) -> dict:
    """One SGD step per demonstration, in order, on the K/V projections only; in place. The
    weights must be float32 (plain SGD on bf16 weights rounds small updates away); the K/V
    weights must change, else a one-line error says the learning rate is too small.

    With ``out``, saves the model (safetensors), its tokenizer and ``train_log.jsonl``. With
    ``record_queries``, ``summary["queries"]`` holds every demonstration token's query vectors
    in its own pass, ``[layer, n_tokens, head, d_head]`` (after any BOS, demonstrations in
    order: the training tokens of Dai et al.'s Kendall measure).
    """
    hf = model.hf
    kv = _checked_kv(model, demos, method)
    before = [p.detach().clone() for _, p in kv]
    queries: list[list[torch.Tensor]] = [[] for _ in decoder_layers(hf)]
    handles = _query_hooks(model, queries) if record_queries else []
    for p in hf.parameters():
        p.requires_grad_(False)
    for _, p in kv:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD([p for _, p in kv], lr=lr)
    was_training = hf.training
    hf.eval()  # no dropout: the update is a deterministic function of the demonstrations
    losses, began = [], time.perf_counter()
    for ex in tqdm(demos, desc=method, disable=not progress):
        ids = torch.tensor([encode_demo(model.tokenizer, ex).ids], device=model.device)
        skip = ids.shape[1] - len(encode(model.tokenizer, format_demo(ex), first=False))
        loss = gd_loss(hf, ids, method)
        if not torch.isfinite(loss):
            raise ConfigError(f"{method} loss became {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        for layer in queries:   # keep the demonstration's own tokens (after any BOS)
            if layer:
                layer[-1] = layer[-1][skip:]
    for handle in handles:
        handle.remove()
    for _, p in kv:
        p.requires_grad_(False)
    hf.train(was_training)
    if all(torch.equal(p.detach(), b) for (_, p), b in zip(kv, before)):
        raise ConfigError(f"{method} left the key/value weights unchanged; the learning rate "
                          f"{lr:g} is too small for these weights")
    summary = {"method": method, "lr": lr, "steps": len(losses), "losses": losses,
               "seconds": round(time.perf_counter() - began, 2)}
    if record_queries:
        summary["queries"] = torch.stack([torch.cat(layer) for layer in queries])
    if out:
        _save_run(model, Path(out), demos, summary)
    return summary


def _checked_kv(model: LoadedModel, demos: Sequence[Example], method: str) -> list:
    """The key/value parameters ``method`` trains, after checking the model and the demos."""
    if method not in GD_METHODS:
        raise ConfigError(f"method must be one of {', '.join(GD_METHODS)}, got {method!r}")
    if model.has_bridge:
        raise ConfigError("this model has been wrapped in a TransformerBridge; load a fresh copy")
    if not demos:
        raise ConfigError("no demonstrations to train on")
    kv = kv_parameters(model.hf)
    if any(p.dtype != torch.float32 for _, p in kv):
        raise ConfigError(f"{method} needs float32 weights (SGD on {kv[0][1].dtype} rounds small "
                          "updates away); load the model with dtype float32")
    return kv


def _save_run(model: LoadedModel, out: Path, demos: Sequence[Example], summary: dict) -> None:
    """The trained model (safetensors), its tokenizer, ``train_log.jsonl`` and
    ``train_config.json``."""
    save_model(model, out)
    write_text(out / "train_log.jsonl", "".join(
        dumps({"step": i, "loss": loss}, indent=None) + "\n"
        for i, loss in enumerate(summary["losses"], 1)))
    write_json(out / "train_config.json",
               {"config": {"method": summary["method"], "lr": summary["lr"],
                           "demos": [d.id for d in demos]},
                "base_model": model.spec,
                **{k: v for k, v in summary.items() if k not in ("losses", "queries")}})
