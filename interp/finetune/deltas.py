"""Weight updates as data: what fine-tuning changed, kept small, applied to one shared model.

A LoRA run's update is stored and kept in memory as its low-rank factors (a few MB for a 135M
model, instead of the merged weights' hundreds): :class:`LowRank` maps ``{parameter name: delta
W}`` and expands one matrix at a time, on access, so dozens of updates fit beside the model. A
full fine-tuning run's update is the difference of the weights (a plain dict). One bridged
model then serves every fine-tuned condition of an experiment:
:meth:`interp.models.LoadedModel.swapped` puts ``base + delta`` in and takes it out again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from interp.arch import plain_name
from interp.files import load_tensors, read_json, save_tensors, write_json

Factors = dict[str, dict]          # weight name -> {"A", "B", "scaling", "transpose"}
Delta = Mapping[str, torch.Tensor]   # weight name -> delta W (a dict, or a LowRank)


class LowRank(Mapping):
    """An update of low-rank matrices, ``delta W = left @ right`` per weight name (``left [out,
    r]``, ``right [r, in]``), expanded to a dense tensor each time a matrix is read."""

    def __init__(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.factors = factors

    def __getitem__(self, name: str) -> torch.Tensor:
        left, right = self.factors[name]
        return left @ right

    def __contains__(self, name) -> bool:
        return name in self.factors

    def __iter__(self) -> Iterator[str]:
        return iter(self.factors)

    def __len__(self) -> int:
        return len(self.factors)


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


def delta_from_factors(factors: Factors) -> LowRank:
    """``scaling * B @ A`` per LoRA layer (transposed for fan-in-fan-out layers), factored."""
    out = {}
    for name, f in factors.items():
        left, right = f["B"] * f["scaling"], f["A"]
        out[name] = (right.T.contiguous(), left.T.contiguous()) if f["transpose"] else (left, right)
    return LowRank(out)


def difference(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> Delta:
    """``after - before`` for every parameter that changed."""
    out = {}
    for name, value in after.items():
        diff = value.detach().float().cpu() - before[name].detach().float().cpu()
        if diff.abs().max() > 0:
            out[name] = diff
    return out


def _generator(seed: int, name: str) -> torch.Generator:
    """A generator of its own for each (seed, parameter name): a digest, so two names never
    share a stream (a sum of character codes gave layers 11 and 20 the same one)."""
    digest = hashlib.sha256(f"{seed}|{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def matrix_spectrum(delta: Delta, name: str) -> torch.Tensor:
    """:func:`spectrum` of one matrix of an update, from its factors when it has them: the
    singular values of ``left @ right`` are those of ``R_left @ R_right^T`` (QR of each
    factor), exact up to rounding and without forming the matrix."""
    if not isinstance(delta, LowRank):
        return spectrum(delta[name])
    left, right = (f.double() for f in delta.factors[name])
    values = torch.linalg.svdvals(torch.linalg.qr(left)[1] @ torch.linalg.qr(right.T)[1].T)
    return _nonzero(values, (left.shape[0], right.shape[1]))


def spectrum(d: torch.Tensor, guess: int = 64) -> torch.Tensor:
    """The non-zero singular values of a matrix, largest first (numerical rank: those above
    ``max(S) * max(shape) * eps``, as ``torch.linalg.matrix_rank``). A matrix of rank below
    ``guess`` (a LoRA update) is reduced to its range first (exact up to rounding: the range of
    ``d @ omega`` is d's for a Gaussian ``omega`` wider than the rank); otherwise the full SVD."""
    d = d.double()
    k = min(guess, *d.shape)
    values = None
    if k < min(d.shape):
        omega = torch.randn(d.shape[1], k, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
        q, _ = torch.linalg.qr(d @ omega)
        values = torch.linalg.svdvals(q.T @ d)
    if values is None or (len(values) and values[-1] > _tolerance(values, d.shape)):
        values = torch.linalg.svdvals(d)          # full rank, or wider than the guess
    return _nonzero(values, d.shape)


def _nonzero(values: torch.Tensor, shape) -> torch.Tensor:
    """Singular values (largest first) of a matrix of ``shape`` above its rank tolerance."""
    if not len(values) or values[0] == 0:
        return values[:0]
    return values[values > _tolerance(values, shape)]


def _tolerance(values: torch.Tensor, shape) -> torch.Tensor:
    return values[0] * max(shape) * torch.finfo(torch.float32).eps


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))     # a Haar-distributed frame


def random_like(delta: Delta, seed: int = 0) -> Delta:
    """A random update that moves each matrix as far as ``delta`` did: per matrix, random
    orthonormal factors with the same rank and singular values (so the same Frobenius and
    spectral norms), seeded by the run seed and the parameter's name; vectors (biases, norms)
    get a random direction with their norm. A factored update gives a factored one."""
    factored = isinstance(delta, LowRank)
    out = {}
    for name in sorted(delta):
        gen = _generator(seed, name)
        if factored:
            left, right = delta.factors[name]
            shape, dtype = (left.shape[0], right.shape[1]), left.dtype
        else:
            d = delta[name]
            shape, dtype = d.shape, d.dtype
            if d.ndim < 2:
                r = torch.randn(d.shape, generator=gen)
                out[name] = r * (d.norm() / r.norm().clamp_min(1e-30))
                continue
        values = matrix_spectrum(delta, name)
        left = _orthonormal(shape[0], len(values), gen) * values
        right = _orthonormal(shape[1], len(values), gen).T
        out[name] = ((left.to(dtype), right.to(dtype).contiguous()) if factored
                     else (left @ right).to(dtype))
    return LowRank(out) if factored else out


def delta_norms(delta: Delta) -> dict[str, dict]:
    """Per matrix: numerical rank, Frobenius and spectral norm (vectors: rank 1, the norm)."""
    out = {}
    for name, d in delta.items():
        values = matrix_spectrum(delta, name) if d.ndim >= 2 else d.norm().reshape(1).double()
        out[name] = {"rank": int(len(values)), "frobenius": float(d.double().norm()),
                     "spectral": float(values[0]) if len(values) else 0.0}
    return out


@torch.no_grad()
def final_inputs(hf, names: set[str], ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The input ``[prompts, d_in]`` at each prompt's final token of every linear layer whose
    weight is named in ``names`` (``ids``: token tensors ``[T]``; one forward each)."""
    inputs: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(module, args):
            inputs.setdefault(name, []).append(args[0][0, -1].detach().float().cpu())
        return hook

    handles = [m.register_forward_pre_hook(keep(_weight_name(n)))
               for n, m in hf.named_modules()
               if isinstance(m, torch.nn.Linear) and _weight_name(n) in names]
    try:
        for row in ids:
            hf(row[None].to(hf.device))
    finally:
        for h in handles:
            h.remove()
    return {name: torch.stack(xs) for name, xs in inputs.items()}


def activation_effect(inputs: dict[str, torch.Tensor], delta: Delta) -> float:
    """The update's reach on real inputs: ``||dW x||`` over the prompts of
    :func:`final_inputs`, averaged over prompts, then over the updated matrices."""
    effects = [(inputs[name] @ d.float().T).norm(dim=-1).mean()
               for name, d in delta.items() if name in inputs and d.ndim == 2]
    return float(torch.stack(effects).mean()) if effects else 0.0


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
