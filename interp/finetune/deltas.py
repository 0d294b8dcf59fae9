"""Weight updates as data: what fine-tuning changed, kept small, applied to one shared model.

A LoRA run's update is stored as its low-rank factors (a few MB for a 135M model, instead of the
merged weights' hundreds) and expanded on demand to ``{parameter name: delta W}``; a full
fine-tuning run's update is the difference of the weights. One bridged model then serves every
fine-tuned condition of an experiment: :meth:`interp.models.LoadedModel.swapped` puts
``base + delta`` in and takes it out again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp.arch import plain_name
from interp.files import load_tensors, read_json, save_tensors, write_json

Factors = dict[str, dict]          # weight name -> {"A", "B", "scaling", "transpose"}
Delta = dict[str, torch.Tensor]    # weight name -> delta W


def _weight_name(module_name: str) -> str:
    return plain_name(module_name).removeprefix("base_model.model.") + ".weight"


def lora_factors(net) -> Factors:
    """The low-rank factors of every LoRA layer of a peft model (adapter ``default``)."""
    out: Factors = {}
    for name, module in net.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "default" not in lora_a:
            continue
        out[_weight_name(name)] = {
            "A": lora_a["default"].weight.detach().float().cpu().clone(),
            "B": module.lora_B["default"].weight.detach().float().cpu().clone(),
            "scaling": float(module.scaling["default"]),
            "transpose": bool(getattr(module, "fan_in_fan_out", False))}
    return out


def delta_from_factors(factors: Factors) -> Delta:
    out = {}
    for name, f in factors.items():
        delta = (f["B"] @ f["A"]) * f["scaling"]
        out[name] = delta.T if f["transpose"] else delta
    return out


def difference(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> Delta:
    """``after - before`` for every parameter that changed."""
    out = {}
    for name, value in after.items():
        diff = value.detach().float().cpu() - before[name].detach().float().cpu()
        if diff.abs().max() > 0:
            out[name] = diff
    return out


def random_like(delta: Delta, seed: int = 0) -> Delta:
    """A random update with the same per-matrix Frobenius norms as ``delta`` (Gaussian
    directions, seeded by the run seed and the parameter's name)."""
    out = {}
    for name in sorted(delta):
        d = delta[name]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, name)) * 7919)
        r = torch.randn(d.shape, generator=gen)
        out[name] = r * (d.norm() / r.norm().clamp_min(1e-30))
    return out


def norms(delta: Delta) -> dict[str, float]:
    return {name: float(d.norm()) for name, d in delta.items()}


def total_norm(delta: Delta) -> float:
    return float(sum(d.pow(2).sum() for d in delta.values()) ** 0.5) if delta else 0.0


def absolute(base: dict[str, torch.Tensor], delta: Delta) -> dict[str, torch.Tensor]:
    """The weights ``base + delta`` for the parameters ``delta`` touches."""
    return {name: base[name] + d.to(base[name].device, base[name].dtype)
            for name, d in delta.items()}


def save_update(path: Path, update: dict) -> None:
    """An update (``{"factors": ...}`` or ``{"delta": ...}``) as ``<path>.safetensors`` and
    ``<path>.json``, atomically."""
    tensors, meta = {}, {}
    if "factors" in update:
        for name, f in update["factors"].items():
            tensors[f"{name}::A"], tensors[f"{name}::B"] = f["A"], f["B"]
            meta[name] = {"scaling": f["scaling"], "transpose": f["transpose"]}
        kind = "lora"
    else:
        tensors = {f"{name}::delta": d for name, d in update["delta"].items()}
        kind = "full"
    save_tensors(path.with_suffix(".safetensors"), tensors)
    write_json(path.with_suffix(".json"), {"kind": kind, "factors": meta})


def load_update(path: Path) -> Delta | None:
    """The delta W of a saved update, or None when it is missing or unreadable."""
    meta = read_json(path.with_suffix(".json"))
    tensors = load_tensors(path.with_suffix(".safetensors")) if meta else None
    if meta is None or tensors is None:
        return None
    if meta["kind"] == "full":
        return {k.removesuffix("::delta"): v for k, v in tensors.items()}
    factors = {name: {"A": tensors[f"{name}::A"], "B": tensors[f"{name}::B"], **info}
               for name, info in meta["factors"].items()}
    return delta_from_factors(factors)
