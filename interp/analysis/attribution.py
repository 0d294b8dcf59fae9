"""Attribution patching: the first-order estimate of activation patching.

effect(component) = (a_source - a_target) . d metric / d a  at the target run, from one source
forward, one target forward and one backward pass for the whole batch (Nanda; Syed et al. 2023).
In the default ``denoise`` direction the source is the clean run and the target the corrupt one,
so the effect estimates ``patched - corrupt`` of :func:`interp.analysis.patching.activation_patch`.
"""

from __future__ import annotations

import warnings

import torch

from interp.analysis.patching import COMPONENTS, grid_shape
from interp.errors import ConfigError
from interp.models import LoadedModel


def _keepers(store: dict, names: list[str]) -> list:
    """Forward hooks that keep each named activation (graph attached) in ``store``."""
    def keeper(name: str):
        def keep(act, hook=None):
            store[name] = act
            return act
        return keep
    return [(n, keeper(n)) for n in names]


def attribution_patch(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor, metric,
                      component: str = "heads", direction: str = "denoise") -> torch.Tensor:
    """Estimated effect of patching each component, per pair: ``[*grid, batch]``."""
    return attribution_components(model, clean, corrupt, metric, [component], direction)[component]


def attribution_components(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                           metric, components=("heads", "mlp"), direction: str = "denoise",
                           with_metric: bool = False) -> dict[str, torch.Tensor]:
    """Several component kinds from the same two forwards and one backward:
    ``{component: [*grid, batch]}``; with ``with_metric`` also the unpatched metrics ``source``
    and ``target`` (``[batch]``) those forwards computed anyway."""
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise ConfigError(f"unknown component {bad[0]!r}; choose one of {', '.join(COMPONENTS)}")
    bridge = model.bridge
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    names = list(dict.fromkeys(COMPONENTS[c].format(l) for c in components
                               for l in range(model.n_layers)))
    with torch.no_grad():
        source_logits, cache = bridge.run_with_cache(source, names_filter=lambda n: n in names)
    acts: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        logits = bridge.run_with_hooks(target, fwd_hooks=_keepers(acts, names))
        values = metric(logits)
        # examples are independent: d sum / d a_b = d m_b / d a_b; no parameter gradients
        grads = dict(zip(names, torch.autograd.grad(values.sum(), [acts[n] for n in names])))
    B, T = target.shape
    out = {}
    for component in components:
        per_layer = []
        for l in range(model.n_layers):
            name = COMPONENTS[component].format(l)
            delta = (cache[name] - acts[name].detach()) * grads[name]
            if component == "heads":
                per_layer.append(delta.sum(dim=(1, 3)).T)             # [head, batch]
            elif component == "heads_pos":
                per_layer.append(delta.sum(dim=3).permute(2, 1, 0))   # [head, pos, batch]
            else:
                per_layer.append(delta.sum(dim=2).T)                  # [pos, batch]
        out[component] = torch.stack(per_layer).float().cpu().reshape(
            *grid_shape(model, component, T), B)
    if with_metric:
        out["source"] = metric(source_logits).detach().float().cpu()
        out["target"] = values.detach().float().cpu()
    return out


def _frozen(act, hook=None):
    return act.detach()


def direct_logit_attribution(model: LoadedModel, tokens: torch.Tensor, answer_ids, foil_ids,
                             position: int = -1) -> dict[str, torch.Tensor]:
    """Each component's direct contribution to ``logit[answer] - logit[foil]`` at ``position``.

    A component's output is read straight through the final norm (its scale frozen at the
    run's value, the usual convention) and the unembedding. Returns ``heads [layer, head, batch]``,
    ``mlp [layer, batch]``, ``embed [batch]``, ``rest [batch]`` (attention biases and the
    unembedding bias) and ``total [batch]`` (the logit difference itself); the parts sum to
    ``total``. Pre-norm decoders only (Llama, Qwen, Mistral): a norm after attention makes a
    head's direct path non-linear.
    """
    if any(hasattr(layer, "post_attention_layernorm") and hasattr(layer, "pre_feedforward_layernorm")
           for layer in model.hf.model.layers[:1]):
        raise ConfigError(f"{model.spec}: per-head direct logit attribution needs a pre-norm "
                          "decoder without post-attention norms (Llama, Qwen, Mistral)")
    bridge = model.bridge
    L = model.n_layers
    names = ([f"blocks.{l}.attn.hook_z" for l in range(L)] +
             [f"blocks.{l}.hook_mlp_out" for l in range(L)] +
             [f"blocks.{l}.hook_attn_out" for l in range(L)] + ["blocks.0.hook_resid_pre"])
    acts: dict[str, torch.Tensor] = {}
    hooks = _keepers(acts, names + ["ln_final.hook_in"])
    hooks.append(("ln_final.hook_scale", _frozen))
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns that an edited norm scale is used
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        rows = torch.arange(tokens.shape[0], device=logits.device)
        last = logits[:, position]
        metric = (last[rows, torch.as_tensor(answer_ids, device=logits.device)] -
                  last[rows, torch.as_tensor(foil_ids, device=logits.device)])
        (grad,) = torch.autograd.grad(metric.sum(), acts["ln_final.hook_in"])
    u = grad[:, position].detach()                                          # [batch, d_model]
    with torch.no_grad():
        heads, mlp, attn = [], [], []
        for l in range(L):
            z = acts[f"blocks.{l}.attn.hook_z"][:, position].detach()       # [batch, head, d_head]
            w_o = bridge.blocks[l].attn.o.weight.detach()                   # [d_model, head*d_head]
            w_o = w_o.view(w_o.shape[0], model.n_heads, -1)
            heads.append(torch.einsum("bhe,dhe,bd->hb", z, w_o, u))
            mlp.append((acts[f"blocks.{l}.hook_mlp_out"][:, position].detach() * u).sum(-1))
            attn.append((acts[f"blocks.{l}.hook_attn_out"][:, position].detach() * u).sum(-1))
        heads, mlp, attn = torch.stack(heads), torch.stack(mlp), torch.stack(attn)
        embed = (acts["blocks.0.hook_resid_pre"][:, position].detach() * u).sum(-1)
        total = metric.detach()
        rest = total - heads.sum((0, 1)) - mlp.sum(0) - embed
    return {k: v.float().cpu() for k, v in
            {"heads": heads, "mlp": mlp, "embed": embed, "rest": rest, "total": total,
             "attn": attn}.items()}
