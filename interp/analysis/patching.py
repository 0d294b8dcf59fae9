"""Batched activation patching on a TransformerBridge.

TransformerLens's ``get_act_patch_*`` runs one forward per patched component. Here many patched
runs are stacked along the batch dimension: for a chunk of c components the target prompts are
repeated c times and each copy has one component replaced by its source activation, so one forward
evaluates c components for every pair. Results equal ``transformer_lens.patching`` (tested).
"""

from __future__ import annotations

import copy
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


def auto_chunk(model: LoadedModel, n_rows: int, n_pos: int, prefix: int = 0) -> int:
    """How many components to stack per forward: within a quarter of free memory (activations of
    ``n_pos`` positions per row plus, when a shared prefix of ``prefix`` tokens is cached, each
    row's copy of its keys and values), and on CPU at most about 256 stacked rows (larger
    batches run no faster there and start at earlier layers)."""
    kv = model.n_kv_heads * model.d_head
    per_row = 4 * (n_pos * (model.hf.config.vocab_size + 24 * model.d_model)
                   + 4 * prefix * model.n_layers * kv)
    if str(model.device).startswith("cuda"):
        free, cap = torch.cuda.mem_get_info(torch.device(model.device))[0], 1 << 16
    else:
        cap = 256
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


@torch.no_grad()
def sweep(model: LoadedModel, target: torch.Tensor, sources: dict[str, torch.Tensor], metric,
          component: str, chunk: int | None = None, start: int = 0,
          progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Run ``target`` once per component with that component set to ``sources[hook]``.

    The core of activation patching and ablation. Copies are stacked along the batch (row
    ``b * c + slot`` for ``c`` components in a chunk). With ``fast`` (default) three exact
    savings apply: the first ``start`` positions, identical in every patched run, are run once
    and shared through the KV cache; on Llama-style models each chunk starts at its first hooked
    layer; and only the last position is unembedded, so the metric sees logits
    ``[batch, 1, vocab]``. ``fast=False`` runs every copy in full, for metrics that read other
    positions. Components indexed at positions before ``start`` cannot change anything and get
    the unpatched metric. Returns ``[*grid, batch]``.
    """
    bridge = model.bridge
    B, T = target.shape
    start = min(start, T - 1) if fast else 0
    grid = component_grid(model, component, T)
    hook = COMPONENTS[component]
    todo = [i for i, index in enumerate(grid) if component == "heads" or index[-1] >= start]
    out = torch.empty(len(grid), B)
    if len(todo) < len(grid):
        out[:] = metric(bridge(target)).float().cpu()
    runner = _SuffixRunner(model, target, start, fast)
    chunk = chunk or auto_chunk(model, B, T - start, start)
    bar = tqdm(total=len(todo), desc=f"patch {component}", disable=not progress, leave=False)
    for first in range(0, len(todo), chunk):
        part = todo[first: first + chunk]
        c = len(part)
        by_layer: dict[int, list[tuple[int, tuple]]] = {}
        for slot, i in enumerate(part):
            by_layer.setdefault(grid[i][0], []).append((slot, grid[i]))

        def make_hook(layer: int):
            src = sources[hook.format(layer)][:, start:]

            def fn(act, hook=None):
                act = act.clone()
                for slot, index in by_layer[layer]:
                    if component != "heads":  # positions count from ``start`` here
                        index = (*index[:-1], index[-1] - start)
                    _set(act, slice(slot, None, c), index, src, component)
                return act
            return fn

        logits = runner(c, [(hook.format(l), make_hook(l)) for l in by_layer], min(by_layer))
        values = torch.stack([metric(logits[slot::c]) for slot in range(c)])
        out[part] = values.float().cpu()
        bar.update(c)
    bar.close()
    return out.reshape(*grid_shape(model, component, T), B)


class _SuffixRunner:
    """Runs ``c`` stacked copies of ``target`` with hooks, sharing what they have in common.

    Positions before ``start`` are run once and reach the copies through the KV cache. On
    Llama-style decoders (where the forward is a plain loop over layers) the copies also start at
    the first hooked layer from the target run's residual stream, since every earlier layer
    computes exactly what the unpatched run did; other architectures run every layer.
    """

    LAYER_LOOP = {"llama", "qwen2", "qwen3", "mistral"}

    def __init__(self, model: LoadedModel, target: torch.Tensor, start: int, fast: bool = True):
        self.model, self.target, self.start, self.fast = model, target, start, fast
        bridge = model.bridge
        self.skip = fast and model.hf.config.model_type in self.LAYER_LOOP
        self.past, self.kv = None, []
        if self.skip:
            names = {f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)}
            _, cache = bridge.run_with_cache(target, names_filter=lambda n: n in names)
            self.resid = [cache[f"blocks.{l}.hook_resid_pre"][:, start:]
                          for l in range(model.n_layers)]
        if start > 0:
            _, self.past = bridge(target[:, :start], return_type="logits_and_cache")
            self.kv = [(layer.keys, layer.values) for layer in self.past.layers]

    def __call__(self, c: int, hooks: list, first_layer: int) -> torch.Tensor:
        if self.skip:
            return self._from_layer(c, hooks, first_layer)
        suffix = self.target[:, self.start:].repeat_interleave(c, dim=0)
        if self.fast:
            hooks = hooks + [LAST_ONLY]
        if self.past is None:
            return self.model.bridge.run_with_hooks(suffix, fwd_hooks=hooks)
        past = copy.deepcopy(self.past)
        past.batch_repeat_interleave(c)
        return self.model.bridge.run_with_hooks(suffix, fwd_hooks=hooks, past_key_values=past)

    def _from_layer(self, c: int, hooks: list, first: int) -> torch.Tensor:
        from transformers.cache_utils import DynamicCache
        from transformers.masking_utils import create_causal_mask

        hf = self.model.hf
        inner, config = hf.model, hf.config
        kv = [(k.repeat_interleave(c, 0), v.repeat_interleave(c, 0)) if i >= first else (k, v)
              for i, (k, v) in enumerate(self.kv)]
        past = DynamicCache(ddp_cache_data=kv, config=config) if kv else None
        h = self.resid[first].repeat_interleave(c, dim=0)
        positions = torch.arange(self.start, self.target.shape[1], device=h.device)[None]
        mask = create_causal_mask(config=config, inputs_embeds=h, attention_mask=None,
                                  past_key_values=past, position_ids=positions)
        rotary = inner.rotary_emb(h, position_ids=positions)
        with self.model.bridge.hooks(fwd_hooks=hooks):
            for layer in inner.layers[first:]:
                h = layer(h, attention_mask=mask, position_embeddings=rotary,
                          position_ids=positions, past_key_values=past, use_cache=bool(kv))
                h = h[0] if isinstance(h, tuple) else h
            return hf.lm_head(inner.norm(h[:, -1:]))


def _last_position(act, hook=None):
    return act[:, -1:]


# a hook that makes the bridge unembed only the last position
LAST_ONLY = ("ln_final.hook_in", _last_position)


def _cache(model: LoadedModel, tokens: torch.Tensor, component: str) -> dict[str, torch.Tensor]:
    names = {COMPONENTS[component].format(l) for l in range(model.n_layers)}
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
    shape; ``metric`` maps logits to ``[batch]``. With ``fast`` the tokens both prompts share up
    front are computed once, later layers only are rerun and only the last position is unembedded
    (all exact, see :func:`sweep`), so the metric gets logits ``[batch, 1, vocab]``; pass
    ``fast=False`` for a metric that reads earlier positions.
    """
    if clean.shape != corrupt.shape:
        raise ConfigError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} differ")
    if direction not in ("denoise", "noise"):
        raise ConfigError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    component_grid(model, component, 1)  # validates the name
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    start = first_difference(clean, corrupt)
    return sweep(model, target, _cache(model, source, component), metric, component, chunk,
                 start, progress, fast)


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
    component_grid(model, component, 1)
    acts = _cache(model, tokens if reference is None else reference, component)
    if reference is not None and reference.shape[1] != tokens.shape[1]:
        raise ConfigError("mean ablation needs reference prompts of the same token length")
    B = tokens.shape[0]
    if mode == "zero":
        sources = {k: torch.zeros_like(v[:1]).expand(B, *v.shape[1:]) for k, v in acts.items()}
    else:
        sources = {k: v.mean(0, keepdim=True).expand(B, *v.shape[1:]) for k, v in acts.items()}
    return sweep(model, tokens, sources, metric, component, chunk, 0, progress, fast)


@torch.no_grad()
def run_metric(model: LoadedModel, tokens: torch.Tensor, metric) -> torch.Tensor:
    """The metric on an unpatched run: ``[batch]``."""
    return metric(model.bridge(tokens)).float().cpu()


def length_groups(items: Sequence) -> dict[int, list[int]]:
    """Indices of tokenised pairs (``{"clean": ...}``) or token sequences (tensors or lists) by
    token length, so that no padding ever enters a forward."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        tokens = item["clean"] if isinstance(item, dict) else item
        n = int(tokens.shape[-1]) if isinstance(tokens, torch.Tensor) else len(tokens)
        groups.setdefault(n, []).append(i)
    return groups


def patch_pairs(model: LoadedModel, pairs: Sequence[dict], component: str = "heads",
                method: str = "activation", direction: str = "denoise", metric=None,
                chunk: int | None = None, progress: bool = False):
    """Patch a list of tokenised pairs of any lengths; returns a
    :class:`~interp.analysis.results.PatchResult` with per-pair scores ``[*grid, n_pairs]``.

    Pairs are grouped by token length, so no padding ever enters a forward. Position-indexed
    components (``resid``, ``attn``, ``mlp``, ``heads_pos``) over pairs of several lengths are
    aligned on the last token: position -1 is every prompt's final token, and the grid keeps as
    many positions as the shortest prompt has (``result.positions`` holds the offsets).
    Each pair is ``{"clean": LongTensor[pos], "corrupt": LongTensor[pos], "answer_id", "foil_id"}``;
    ``metric(idx)``, if given, builds the metric for the pairs ``idx`` of one length group.
    """
    from interp.analysis.attribution import attribution_patch
    from interp.analysis.metrics import logit_diff
    from interp.analysis.results import PatchResult

    if method not in ("activation", "attribution"):
        raise ConfigError(f"method must be 'activation' or 'attribution', got {method!r}")
    component_grid(model, component, 1)
    if not pairs:
        raise ConfigError("no pairs to patch")
    for i, p in enumerate(pairs):
        if p["clean"].shape != p["corrupt"].shape:
            raise ConfigError(f"pair {i}: clean and corrupt token lengths differ")
    groups = length_groups(pairs)
    positional = component != "heads"
    width = min(groups)
    scores, clean_base, corrupt_base = {}, {}, {}
    bar = tqdm(total=len(pairs), desc=f"{method} {component}", disable=not progress)
    for length, idx in sorted(groups.items()):
        clean = torch.stack([pairs[i]["clean"] for i in idx]).to(model.device)
        corrupt = torch.stack([pairs[i]["corrupt"] for i in idx]).to(model.device)
        if metric is None:
            m = logit_diff([pairs[i]["answer_id"] for i in idx],
                           [pairs[i]["foil_id"] for i in idx])
        else:
            m = metric(idx)
        c, k = run_metric(model, clean, m), run_metric(model, corrupt, m)
        if method == "activation":
            s = activation_patch(model, clean, corrupt, m, component, direction, chunk)
        else:  # estimated patched metric = target baseline + first-order effect
            s = attribution_patch(model, clean, corrupt, m, component, direction)
            s = s + (k if direction == "denoise" else c)
        if positional:
            s = s[..., length - width:, :]
        for j, i in enumerate(idx):
            scores[i], clean_base[i], corrupt_base[i] = s[..., j], c[j], k[j]
        bar.update(len(idx))
    bar.close()
    order = range(len(pairs))
    positions = None
    if positional:
        positions = list(range(width)) if len(groups) == 1 else list(range(-width, 0))
    return PatchResult(component, method, direction,
                       torch.stack([scores[i] for i in order], dim=-1),
                       torch.stack([clean_base[i] for i in order]),
                       torch.stack([corrupt_base[i] for i in order]), positions)


def set_cache(model: LoadedModel, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Clean activations :func:`patch_set` draws from (every head output and MLP output)."""
    names = ({f"blocks.{l}.attn.hook_z" for l in range(model.n_layers)} |
             {f"blocks.{l}.hook_mlp_out" for l in range(model.n_layers)})
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(clean, names_filter=lambda n: n in names)
    return {n: cache[n] for n in names}


@torch.no_grad()
def patch_set(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor, metric,
              heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (),
              cache: dict | None = None) -> torch.Tensor:
    """Metric of the corrupt run with all the given heads (``hook_z``) and MLP outputs patched in
    from the clean run at once, at every position: ``[batch]``. A circuit's faithfulness.
    ``cache`` (from :func:`set_cache`) saves the clean forward when many sets are tried."""
    cache = cache if cache is not None else set_cache(model, clean)
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)

    def head_hook(layer):
        def fn(z, hook=None):
            z = z.clone()
            idx = by_layer[layer]
            z[:, :, idx] = cache[f"blocks.{layer}.attn.hook_z"][:, :, idx]
            return z
        return fn

    hooks = [(f"blocks.{l}.attn.hook_z", head_hook(l)) for l in by_layer]
    hooks += [(f"blocks.{l}.hook_mlp_out",
               lambda act, hook=None, l=l: cache[f"blocks.{l}.hook_mlp_out"]) for l in mlps]
    return metric(model.bridge.run_with_hooks(corrupt, fwd_hooks=hooks)).float().cpu()
