"""Batched activation patching and ablation.

TransformerLens's ``get_act_patch_*`` runs one forward per patched component. Here many patched
runs are stacked along the batch dimension: for a chunk of c components the target prompts are
repeated c times and each copy has one component replaced by its source activation, so one forward
evaluates c components for every pair. Results equal ``transformer_lens.patching`` (tested on
every supported architecture).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.analysis.components import COMPONENT_KINDS, hook_names, kind
from interp.engine import capture, forward, prefix_cache, repeat_cache, residual_streams
from interp.errors import ConfigError
from interp.models import LoadedModel


def auto_chunk(model: LoadedModel, n_rows: int, n_pos: int, prefix: int = 0) -> int:
    """How many components to stack per forward: within a quarter of free memory (activations of
    ``n_pos`` positions per row plus, when a shared prefix of ``prefix`` tokens is cached, each
    row's copy of its keys and values), and on CPU at most about 256 stacked rows (larger
    batches run no faster there) and about 16k cached positions in all (copying more keys and
    values per forward costs more than the forward saves)."""
    kv = model.n_kv_heads * model.d_head
    per_row = 4 * (n_pos * (model.hf.config.vocab_size + 24 * model.d_model)
                   + 4 * prefix * model.n_layers * kv)
    if str(model.device).startswith("cuda"):
        free, cap = torch.cuda.mem_get_info(torch.device(model.device))[0], 1 << 16
    else:
        cap = max(1, min(256, (1 << 14) // max(prefix, 1)))
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            free = 4 << 30
    rows = max(1, n_rows)
    return max(1, min(int(free * 0.25 // (per_row * rows)), cap // rows))


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """First position where any row of two ``[batch, pos]`` token tensors differs (pos if none)."""
    differs = (a != b).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else a.shape[1]


class StackedRunner:
    """Runs ``c`` stacked copies of ``target`` ``[batch, pos]`` with hooks, sharing what they have
    in common: with ``fast``, the first ``start`` positions are run once and reach the copies
    through the KV cache, each run starts at its first hooked layer from the target's residual
    stream, and only the last position is unembedded. Without ``fast`` every copy runs in full
    through the bridge (logits of every position)."""

    def __init__(self, model: LoadedModel, target: torch.Tensor, start: int = 0,
                 fast: bool = True):
        self.model, self.fast = model, fast
        self.start = min(start, target.shape[1] - 1) if fast else 0
        self.target = target
        self.suffix = target[:, self.start:]
        self.cache = prefix_cache(model, target[:, :self.start]) if self.start else None
        self.resid = None
        if fast:
            past = repeat_cache(self.cache, 1) if self.cache is not None else None
            self.resid = residual_streams(model, self.suffix, past)

    def __call__(self, c: int, hooks: list, first_layer: int = 0) -> torch.Tensor:
        if not self.fast:
            return self.model.bridge.run_with_hooks(self.target.repeat_interleave(c, dim=0),
                                                    fwd_hooks=hooks)
        past = repeat_cache(self.cache, c, from_layer=first_layer) if self.cache else None
        resid = self.resid[first_layer].repeat_interleave(c, dim=0) if first_layer else None
        return forward(self.model, self.suffix.repeat_interleave(c, dim=0), past, hooks,
                       first_layer, resid)


def span_chunk(chunk: int, n_components: int, n_layers: int) -> int:
    """``chunk`` capped so that a chunk of the layer-major grid spans at most a third of the
    layers: every row of a chunk runs from the chunk's first layer, so a chunk over many layers
    recomputes early layers for its later components (SmolLM2, 1 pair: 256 heads per chunk
    2.65 s, 90 (10 layers) 1.99 s; at 16 pairs the memory cap already keeps chunks short)."""
    per_layer = max(1, n_components // n_layers)
    return max(1, min(chunk, per_layer * max(1, math.ceil(n_layers / 3))))


@torch.no_grad()
def patch_sweep(model: LoadedModel, target: torch.Tensor, sources: dict[str, torch.Tensor], metric,
          component: str, chunk: int | None = None, start: int = 0,
          progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Run ``target`` once per component with that component set to ``sources[hook]``.

    The core of activation patching and ablation. Copies are stacked along the batch (row
    ``b * c + slot`` for ``c`` components in a chunk); see :class:`StackedRunner` for what
    ``fast`` shares (all exact). With ``fast`` the metric sees logits ``[batch, 1, vocab]``;
    ``fast=False`` gives it every position. Components indexed at positions before ``start``
    cannot change anything and get the unpatched metric. Returns ``[*grid, batch]``.
    """
    spec = kind(component)
    B, T = target.shape
    runner = StackedRunner(model, target, start, fast)
    start = runner.start
    grid = spec.grid(model.n_layers, model.n_heads, T)
    todo = [i for i, index in enumerate(grid) if not spec.per_position or index[-1] >= start]
    out = torch.empty(len(grid), B)
    if len(todo) < len(grid):
        out[:] = metric(runner(1, [])).float().cpu()
    chunk = chunk or span_chunk(auto_chunk(model, B, T - start, start), len(grid),
                                model.n_layers)
    bar = tqdm(total=len(todo), desc=f"patch {component}", disable=not progress, leave=False)
    for first in range(0, len(todo), chunk):
        part = todo[first: first + chunk]
        c = len(part)
        by_layer: dict[int, list[tuple[int, tuple]]] = {}
        for slot, i in enumerate(part):
            by_layer.setdefault(grid[i][0], []).append((slot, grid[i]))

        def make_hook(layer: int):
            src = sources[spec.hook_name(layer)][:, start:]

            def fn(act, hook=None):
                act = act.clone()
                for slot, index in by_layer[layer]:
                    if spec.per_position:  # positions count from ``start`` here
                        index = (*index[:-1], index[-1] - start)
                    spec.set(act, slice(slot, None, c), index, src)
                return act
            return fn

        hooks = [(spec.hook_name(l), make_hook(l)) for l in by_layer]
        logits = runner(c, hooks, min(by_layer))
        out[part] = torch.stack([metric(logits[slot::c]) for slot in range(c)]).float().cpu()
        bar.update(c)
    bar.close()
    return out.reshape(*spec.grid_shape(model.n_layers, model.n_heads, T), B)


def cache_activations(model: LoadedModel, tokens: torch.Tensor, component: str
                      ) -> dict[str, torch.Tensor]:
    """Every layer's activation of ``component`` for ``tokens`` (one forward)."""
    names = set(kind(component).hook_names(model.n_layers))
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {name: cache[name] for name in names}


def activation_patch(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                     metric: Callable[[torch.Tensor], torch.Tensor], component: str = "heads",
                     direction: str = "denoise", chunk: int | None = None,
                     progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Patch every component; returns the metric per component and pair: ``[*grid, batch]``.

    ``denoise``: run the corrupt prompts with one clean activation patched in (the quantity
    ``transformer_lens.patching`` computes). ``noise``: run the clean prompts with one corrupt
    activation patched in. ``clean`` and ``corrupt`` are ``[batch, pos]`` token tensors of equal
    shape; ``metric`` maps logits to ``[batch]``. With ``fast`` (all exact, see :func:`sweep`)
    the metric gets logits ``[batch, 1, vocab]``; pass ``fast=False`` for a metric that reads
    earlier positions.
    """
    if clean.shape != corrupt.shape:
        raise ConfigError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} differ")
    if direction not in ("denoise", "noise"):
        raise ConfigError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    kind(component)
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    start = first_difference(clean, corrupt)
    return patch_sweep(model, target, cache_activations(model, source, component), metric,
                       component, chunk, start, progress, fast)


def ablate(model: LoadedModel, tokens: torch.Tensor, metric, mode: str = "zero",
           component: str = "heads", reference: torch.Tensor | None = None,
           chunk: int | None = None, progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Metric with each component ablated, per prompt: ``[*grid, batch]``.

    ``zero``: the component's activation set to 0. ``mean``: set to its mean over the prompts of
    ``reference`` (default: ``tokens`` itself), per position, so all prompts share one length.
    Importance is the drop from the unablated metric (:func:`run_metric`).
    """
    if mode not in ("zero", "mean"):
        raise ConfigError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    kind(component)
    if reference is not None and reference.shape[1] != tokens.shape[1]:
        raise ConfigError("mean ablation needs reference prompts of the same token length")
    acts = cache_activations(model, tokens if reference is None else reference, component)
    B = tokens.shape[0]
    if mode == "zero":
        sources = {k: torch.zeros_like(v[:1]).expand(B, *v.shape[1:]) for k, v in acts.items()}
    else:
        sources = {k: v.mean(0, keepdim=True).expand(B, *v.shape[1:]) for k, v in acts.items()}
    return patch_sweep(model, tokens, sources, metric, component, chunk, 0, progress, fast)


@torch.no_grad()
def run_metric(model: LoadedModel, tokens: torch.Tensor, metric, last_only: bool = True
               ) -> torch.Tensor:
    """The metric on an unpatched run: ``[batch]`` (``last_only``: logits of the last
    position only, as the fast paths give them)."""
    if last_only:
        return metric(forward(model, tokens)).float().cpu()
    return metric(model.bridge(tokens)).float().cpu()


@torch.no_grad()
def patch_set(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor, metric,
              heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = ()) -> torch.Tensor:
    """Metric of the corrupt run with all the given heads (``hook_z``) and MLP outputs patched in
    from the clean run at once, at every position: ``[batch]``. A circuit's faithfulness."""
    start = min(first_difference(clean, corrupt), clean.shape[1] - 1)
    return stacked_sets(model, corrupt, [(heads, mlps)], set_values(model, clean, start),
                        metric, start)[0]


ComponentSet = tuple[Sequence[tuple[int, int]], Sequence[int]]   # (heads [(l, h)], mlps [l])


@torch.no_grad()
def stacked_sets(model: LoadedModel, target: torch.Tensor, sets: Sequence[ComponentSet],
                 values: dict[str, torch.Tensor], metric, start: int = 0,
                 chunk: int = 16) -> torch.Tensor:
    """The metric of ``target`` ``[batch, pos]`` with each set's heads (``hook_z``) and MLP
    outputs replaced by ``values`` (activations keyed by hook name, ``[batch or 1, pos - start,
    ...]``, positions counted from ``start``) at every position from ``start`` on; one row per
    set: ``[n_sets, batch]``. Sets are stacked along the batch, positions before ``start`` are
    shared through the KV cache and each chunk starts at its first set layer (all exact)."""
    runner = StackedRunner(model, target, start)
    start = runner.start
    heads_hook, mlp_hook = COMPONENT_KINDS["heads"].hook_name, COMPONENT_KINDS["mlp"].hook_name
    out = torch.empty(len(sets), target.shape[0])
    for first in range(0, len(sets), chunk):
        part = list(sets[first: first + chunk])
        c = len(part)
        layers: dict[int, list] = {}
        for slot, (heads, mlps) in enumerate(part):
            for l, h in heads:
                layers.setdefault(l, []).append((slot, h))
            for l in mlps:
                layers.setdefault(l, []).append((slot, None))
        if not layers:   # empty sets only: the unpatched run
            out[first: first + c] = metric(runner(1, [])).float().cpu()
            continue

        def head_fn(layer):
            def fn(z, hook=None):
                z = z.clone()
                src = values[heads_hook(layer)]
                for slot, h in layers[layer]:
                    if h is not None:
                        z[slot::c, :, h] = src[:, :, h].to(z.dtype)
                return z
            return fn

        def mlp_fn(layer):
            def fn(act, hook=None):
                act = act.clone()
                src = values[mlp_hook(layer)]
                for slot, h in layers[layer]:
                    if h is None:
                        act[slot::c] = src.to(act.dtype)
                return act
            return fn

        hooks = []
        for l, members in layers.items():
            if any(h is not None for _, h in members):
                hooks.append((heads_hook(l), head_fn(l)))
            if any(h is None for _, h in members):
                hooks.append((mlp_hook(l), mlp_fn(l)))
        logits = runner(c, hooks, min(layers))
        out[first: first + c] = torch.stack([metric(logits[s::c]) for s in range(c)]).float().cpu()
    return out


def set_values(model: LoadedModel, tokens: torch.Tensor, start: int = 0, metric=None):
    """Every head's ``hook_z`` and every MLP's output for ``tokens`` at positions from
    ``start`` on (what :func:`stacked_sets` patches in); with ``metric``, also the metric of that
    run: ``(values, metric [batch])``."""
    names = set(hook_names(model.n_layers))
    store, hooks = capture(names)
    past = prefix_cache(model, tokens[:, :start]) if start else None
    with torch.no_grad():
        logits = forward(model, tokens[:, start:], past, hooks)
    return store if metric is None else (store, metric(logits).float().cpu())
