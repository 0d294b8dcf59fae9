"""Attribution patching (the first-order estimate of activation patching) and direct logit
attribution.

effect(component) = (a_source - a_target) . d metric / d a  at the target run, from one source
forward, one target forward and one backward pass for the whole batch (Nanda; Syed et al. 2023).
In the default ``denoise`` direction the source is the clean run and the target the corrupt one,
so the effect estimates ``patched - corrupt`` of :func:`interp.analysis.patching.activation_patch`.

Positions before the first token where clean and corrupt differ have identical activations in
both runs and contribute nothing; they are computed once, shared through the KV cache, and no
gradient flows through them (for ICL prompts, that is the whole demonstration prefix).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from interp.analysis.components import COMPONENT_KINDS, hook_names, kind, resid_hook
from interp.analysis.patching import first_difference
from interp.arch import b_o as output_bias
from interp.arch import final_norm, head_writes, layer_module, rms_gain, unwrap, w_o
from interp.engine import capture, forward, prefix_cache, repeat_cache
from interp.errors import ConfigError, UnsupportedError
from interp.models import LoadedModel


def attribution_patch(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor, metric,
                      component: str = "heads", direction: str = "denoise") -> torch.Tensor:
    """Estimated effect of patching each component, per pair: ``[*grid, batch]``."""
    return attribution_components(model, clean, corrupt, metric, [component], direction)[component]


def attribution_components(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                           metric, components=("heads", "mlp"), direction: str = "denoise",
                           with_metric: bool = False, lengths: Sequence[int] | None = None
                           ) -> dict[str, torch.Tensor]:
    """Several component kinds from the same two forwards and one backward:
    ``{component: [*grid, batch]}``; with ``with_metric`` also the unpatched metrics ``source``
    and ``target`` (``[batch]``) those forwards computed anyway. The metric sees logits of the
    last position only, ``[batch, 1, vocab]``: with ``lengths`` (rows of different lengths,
    right-padded to one width), each row's last token. Padding is exact: under causal attention
    no real position reads a pad, and the metric reads no pad, so every pad position's gradient
    and effect is zero."""
    if clean.shape != corrupt.shape:
        raise ConfigError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} differ")
    if direction not in ("denoise", "noise"):
        raise ConfigError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    specs = [kind(c) for c in components]
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    B, T = target.shape
    ends = torch.as_tensor(lengths if lengths is not None else [T] * B) - 1
    if len(ends) != B or not bool(((ends >= 0) & (ends < T)).all()):
        raise ConfigError(f"lengths must give each of the {B} rows a length in 1..{T}, got "
                          f"{list(lengths or [])}")
    start = min(first_difference(clean, corrupt), int(ends.min()))
    cache = prefix_cache(model, target[:, :start]) if start else None
    keep, column = torch.unique(ends - start, return_inverse=True)
    rows = torch.arange(B)

    def last(logits):               # each row's last token: [batch, 1, vocab]
        return logits[rows.to(logits.device), column.to(logits.device)][:, None]

    def past():
        return repeat_cache(cache, 1) if cache is not None else None

    names = list(dict.fromkeys(n for s in specs for n in s.hook_names(model.n_layers)))
    src, src_hooks = capture(names)
    with torch.no_grad():
        source_logits = last(forward(model, source[:, start:], past(), src_hooks,
                                     positions=keep.to(source.device)))
    acts, hooks = capture(names, graph=True)
    with torch.enable_grad():
        logits = forward(model, target[:, start:], past(), hooks, positions=keep.to(target.device))
        values = metric(last(logits))
        # examples are independent: d sum / d a_b = d m_b / d a_b; no parameter gradients
        grads = dict(zip(names, torch.autograd.grad(values.sum(), [acts[n] for n in names])))
    out = {}
    for spec in specs:
        per_layer = []
        for name in spec.hook_names(model.n_layers):
            per_layer.append(spec.reduce((src[name] - acts[name].detach()) * grads[name]))
        scores = torch.stack(per_layer).float().cpu()
        if spec.per_position and start:   # positions before ``start`` have no effect
            pad = torch.zeros(*scores.shape[:-2], start, B)
            scores = torch.cat([pad, scores], dim=-2)
        out[spec.name] = scores.reshape(*spec.grid_shape(model.n_layers, model.n_heads, T), B)
    if with_metric:
        out["source"] = metric(source_logits).detach().float().cpu()
        out["target"] = values.detach().float().cpu()
    return out


def _frozen(act, hook=None):
    return act.detach()


def direct_logit_attribution(model: LoadedModel, tokens: torch.Tensor, answer_ids, foil_ids,
                             position: int = -1) -> dict[str, torch.Tensor]:
    """Each component's direct contribution to ``logit[answer] - logit[foil]`` at ``position``.

    A component's write into the residual stream is read straight through the final norm (its
    scale frozen at the run's value, the usual convention) and the unembedding; through Gemma's
    post-attention norm, likewise with that norm's scale frozen, so the heads' parts sum to
    what attention adds. Returns ``heads [layer, head, batch]``, ``mlp [layer, batch]``,
    ``embed [batch]``, ``bias [batch]`` (attention output biases), ``final_bias [batch]`` (the
    final norm's bias through the unembedding), ``total [batch]`` (the logit difference
    itself) and ``rest [batch]``: total minus every part, zero up to rounding (tested).
    """
    a = model.adapter
    a.require("dla")
    if getattr(model.hf.config, "final_logit_softcapping", None):
        raise UnsupportedError(f"model type {a.model_type!r} does not support direct logit "
                               "attribution: its logits are soft-capped (not linear in the "
                               "residual stream)")
    bridge, hf, L = model.bridge, model.hf, model.n_layers
    heads_hook, mlp_hook = COMPONENT_KINDS["heads"].hook_name, COMPONENT_KINDS["mlp"].hook_name
    names = hook_names(L) + [resid_hook(0)]
    acts, hooks = capture(names + ["ln_final.hook_in"], graph=True)
    hooks.append(("ln_final.hook_scale", _frozen))
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns that an edited norm scale is used
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        rows = torch.arange(tokens.shape[0], device=logits.device)
        last = logits[:, position]
        answer = torch.as_tensor(answer_ids, device=logits.device)
        foil = torch.as_tensor(foil_ids, device=logits.device)
        metric = last[rows, answer] - last[rows, foil]
        (grad,) = torch.autograd.grad(metric.sum(), acts["ln_final.hook_in"])
    u = grad[:, position].detach().float()                                # [batch, d_model]
    with torch.no_grad():
        heads, mlp, bias = [], [], torch.zeros(tokens.shape[0])
        for l in range(L):
            z = acts[heads_hook(l)][:, position].detach().float()  # [b, head, e]
            w = w_o(hf, l).detach().float()
            b_o = output_bias(hf, l)
            raw = torch.einsum("bhe,dhe->bd", z, w)
            if b_o is not None:
                raw = raw + b_o.detach().float()
            writes = head_writes(hf, l, z, attn_out=raw).float()         # [b, head, d]
            heads.append(torch.einsum("bhd,bd->hb", writes, u).cpu())
            if b_o is not None:
                gain = 1.0
                if a.post_attn_norm is not None:
                    gain = rms_gain(layer_module(hf, l, a.post_attn_norm), raw,
                                         a.norm_offset)
                bias += ((b_o.detach().float() * gain) * u).sum(-1).cpu()
            mlp_out = acts[mlp_hook(l)][:, position].detach().float()
            mlp.append((mlp_out * u).sum(-1).cpu())
        embed = (acts[resid_hook(0)][:, position].detach().float() * u).sum(-1)
        final_bias = _final_bias(model, answer, foil)
        heads, mlp = torch.stack(heads), torch.stack(mlp)
        total = metric.detach().float().cpu()
        rest = total - heads.sum((0, 1)) - mlp.sum(0) - embed.cpu() - bias - final_bias
    return {"heads": heads, "mlp": mlp, "embed": embed.cpu(), "bias": bias,
            "final_bias": final_bias, "total": total, "rest": rest}


def _final_bias(model: LoadedModel, answer: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """What the final norm's bias (LayerNorm models) and the unembedding's bias add to the
    logit difference: ``[batch]`` (zeros for RMSNorm models)."""
    hf = model.hf
    head = unwrap(hf.get_output_embeddings())
    w = head.weight.detach().float()
    out = torch.zeros(len(answer))
    norm_bias = getattr(final_norm(hf), "bias", None)
    if norm_bias is not None:
        out += (w[answer.cpu()] - w[foil.cpu()]).to(norm_bias.device) @ norm_bias.detach().float()
    if getattr(head, "bias", None) is not None:
        out += (head.bias[answer] - head.bias[foil]).detach().float().cpu()
    return out
