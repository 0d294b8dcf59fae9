"""Batched activation patching on a TransformerBridge.

TransformerLens's ``get_act_patch_*`` runs one forward per patched component. Here many patched
runs are stacked along the batch dimension: for a chunk of c components the target prompts are
repeated c times and each copy has one component replaced by its source activation, so one forward
evaluates c components for every pair. Results equal ``transformer_lens.patching`` (tested).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import ConfigError
from interp.models import LoadedModel

COMPONENTS = {
    "heads": "blocks.{}.attn.hook_z",      # [batch, pos, head, d_head], all positions
    "heads_pos": "blocks.{}.attn.hook_z",  # per (layer, head, position)
    "resid": "blocks.{}.hook_resid_pre",   # [batch, pos, d_model], per (layer, position)
    "attn": "blocks.{}.hook_attn_out",
    "mlp": "blocks.{}.hook_mlp_out",
}


def component_grid(model: LoadedModel, component: str, n_pos: int) -> list[tuple]:
    """Index tuples in output order: (layer, head), (layer, head, pos) or (layer, pos)."""
    L, H = model.n_layers, model.n_heads
    if component == "heads":
        return [(l, h) for l in range(L) for h in range(H)]
    if component == "heads_pos":
        return [(l, h, p) for l in range(L) for h in range(H) for p in range(n_pos)]
    if component in COMPONENTS:
        return [(l, p) for l in range(L) for p in range(n_pos)]
    raise ConfigError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")


def grid_shape(model: LoadedModel, component: str, n_pos: int) -> tuple[int, ...]:
    if component == "heads":
        return (model.n_layers, model.n_heads)
    if component == "heads_pos":
        return (model.n_layers, model.n_heads, n_pos)
    return (model.n_layers, n_pos)


def _set(act: torch.Tensor, rows: slice, index: tuple, src: torch.Tensor, component: str) -> None:
    if component == "heads":
        act[rows, :, index[1]] = src[:, :, index[1]]
    elif component == "heads_pos":
        act[rows, index[2], index[1]] = src[:, index[2], index[1]]
    else:
        act[rows, index[1]] = src[:, index[1]]


def auto_chunk(model: LoadedModel, n_rows: int, n_pos: int) -> int:
    """How many components to stack per forward, from free memory (a quarter of it)."""
    per_row = 4 * n_pos * (model.hf.config.vocab_size + 24 * model.d_model)
    if str(model.device).startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(model.device))[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            free = 4 << 30
    return max(1, int(free * 0.25 // (per_row * max(1, n_rows))))


@torch.no_grad()
def activation_patch(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                     metric: Callable[[torch.Tensor], torch.Tensor], component: str = "heads",
                     direction: str = "denoise", chunk: int | None = None,
                     progress: bool = False) -> torch.Tensor:
    """Patch every component; returns the metric per component and pair: ``[*grid, batch]``.

    ``denoise``: run the corrupt prompts with one clean activation patched in (the quantity
    ``transformer_lens.patching`` computes). ``noise``: run the clean prompts with one corrupt
    activation patched in. ``clean`` and ``corrupt`` are ``[batch, pos]`` token tensors of equal
    shape; ``metric`` maps logits ``[batch, pos, vocab]`` to ``[batch]``.
    """
    if clean.shape != corrupt.shape:
        raise ConfigError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} differ")
    if direction not in ("denoise", "noise"):
        raise ConfigError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    bridge = model.bridge
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    B, T = target.shape
    grid = component_grid(model, component, T)
    hook = COMPONENTS[component]
    names = {hook.format(l) for l in range(model.n_layers)}
    _, cache = bridge.run_with_cache(source, names_filter=lambda n: n in names)
    chunk = chunk or auto_chunk(model, B, T)
    out = torch.empty(len(grid), B)
    bar = tqdm(total=len(grid), desc=f"patch {component}", disable=not progress, leave=False)
    for start in range(0, len(grid), chunk):
        part = grid[start: start + chunk]
        by_layer: dict[int, list[tuple[int, tuple]]] = {}
        for slot, index in enumerate(part):
            by_layer.setdefault(index[0], []).append((slot, index))

        def make_hook(layer: int):
            src = cache[hook.format(layer)]

            def fn(act, hook=None):
                act = act.clone()
                for slot, index in by_layer[layer]:
                    _set(act, slice(slot * B, (slot + 1) * B), index, src, component)
                return act
            return fn

        hooks = [(hook.format(l), make_hook(l)) for l in by_layer]
        logits = bridge.run_with_hooks(target.repeat(len(part), 1), fwd_hooks=hooks)
        values = torch.stack([metric(logits[j * B: (j + 1) * B]) for j in range(len(part))])
        out[start: start + len(part)] = values.float().cpu()
        bar.update(len(part))
    bar.close()
    return out.reshape(*grid_shape(model, component, T), B)


@torch.no_grad()
def run_metric(model: LoadedModel, tokens: torch.Tensor, metric) -> torch.Tensor:
    """The metric on an unpatched run: ``[batch]``."""
    return metric(model.bridge(tokens)).float().cpu()


def patch_pairs(model: LoadedModel, pairs: Sequence[dict], component: str = "heads",
                method: str = "activation", direction: str = "denoise", metric=None,
                chunk: int | None = None, progress: bool = False) -> dict:
    """Patch a list of tokenised pairs of any lengths (grouped by length, so no padding enters a
    forward); returns per-pair scores ``[*grid, n_pairs]`` plus clean and corrupt baselines.

    Each pair is ``{"clean": LongTensor[pos], "corrupt": LongTensor[pos], "answer_id", "foil_id"}``.
    Position-indexed components need all pairs of one length.
    """
    from interp.analysis.attribution import attribution_patch
    from interp.analysis.metrics import logit_diff

    groups: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        if p["clean"].shape != p["corrupt"].shape:
            raise ConfigError(f"pair {i}: clean and corrupt token lengths differ")
        groups.setdefault(int(p["clean"].shape[-1]), []).append(i)
    if component in ("resid", "attn", "mlp", "heads_pos") and len(groups) > 1:
        raise ConfigError(f"component {component!r} is indexed by position: all pairs need "
                          f"one token length, got {sorted(groups)}")
    scores, clean_base, corrupt_base = {}, {}, {}
    for length, idx in groups.items():
        clean = torch.stack([pairs[i]["clean"] for i in idx]).to(model.device)
        corrupt = torch.stack([pairs[i]["corrupt"] for i in idx]).to(model.device)
        m = metric or logit_diff([pairs[i]["answer_id"] for i in idx],
                                 [pairs[i]["foil_id"] for i in idx])
        if method == "activation":
            s = activation_patch(model, clean, corrupt, m, component, direction, chunk, progress)
        elif method != "attribution":
            raise ConfigError(f"method must be 'activation' or 'attribution', got {method!r}")
        c, k = run_metric(model, clean, m), run_metric(model, corrupt, m)
        if method == "attribution":  # estimated patched metric = target baseline + effect
            effect = attribution_patch(model, clean, corrupt, m, component, direction)
            s = effect + (k if direction == "denoise" else c)
        for j, i in enumerate(idx):
            scores[i], clean_base[i], corrupt_base[i] = s[..., j], c[j], k[j]
    order = range(len(pairs))
    return {"scores": torch.stack([scores[i] for i in order], dim=-1),
            "clean": torch.stack([clean_base[i] for i in order]),
            "corrupt": torch.stack([corrupt_base[i] for i in order])}
