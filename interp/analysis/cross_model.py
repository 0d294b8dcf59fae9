"""Cross-model activation patching: where does fine-tuning's gain live?

The same prompts run through two models of one architecture (a base model and its fine-tuned
copy). Each component's activation from the *source* model is patched, one at a time, into the
*target* model; the normalised effect is 1 when that component alone makes the target behave
like the source, 0 when it changes nothing. Patching fine-tuned activations into the base model
finds the components that carry the gain; the reverse finds those whose loss undoes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from interp.analysis.components import kind as component_kind
from interp.analysis.metrics import logit_diff
from interp.analysis.patching import patch_sweep, run_metric
from interp.analysis.results import PatchResult
from interp.engine import length_groups
from interp.errors import ConfigError
from interp.models import LoadedModel


def check_compatible(a: LoadedModel, b: LoadedModel) -> None:
    shape = lambda m: (m.n_layers, m.n_heads, m.n_kv_heads, m.d_model, m.d_head)  # noqa: E731
    if shape(a) != shape(b):
        raise ConfigError(f"models differ in shape (layers, heads, kv heads, d_model, d_head): "
                          f"{a.spec} {shape(a)} vs {b.spec} {shape(b)}")
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ConfigError(f"{a.spec} and {b.spec} use different tokenizers")


def cross_model_patch(target: LoadedModel, source: LoadedModel, tokens: Sequence[dict],
                      component: str = "heads",
                      metric_for: Callable[[list[int]], Callable] | None = None,
                      chunk: int | None = None, progress: bool = False):
    """Patch each ``component`` of ``source`` into ``target`` on the prompts ``tokens[i]["clean"]``
    (token tensors, grouped by length). Returns a :class:`~interp.analysis.results.PatchResult`
    whose ``clean`` is the source model's metric and ``corrupt`` the target's, so
    ``normalized`` = (patched - target) / (source - target). Position components are aligned on
    the final token, as in :func:`~interp.analysis.patching.patch_pairs`."""
    check_compatible(target, source)
    spec = component_kind(component)
    if metric_for is None:
        def metric_for(idx):
            return logit_diff([tokens[i]["answer_id"] for i in idx],
                              [tokens[i]["foil_id"] for i in idx])
    groups = length_groups(tokens)
    keep = min(groups) if spec.per_position else None
    hooks = set(spec.hook_names(target.n_layers))
    parts, order, src_m, tgt_m = [], [], [], []
    for n_pos, idx in groups.items():
        batch = torch.stack([tokens[i]["clean"] for i in idx]).to(target.device)
        metric = metric_for(idx)
        with torch.no_grad():
            logits, cache = source.bridge.run_with_cache(batch.to(source.device),
                                                         names_filter=lambda n: n in hooks)
        src_m.append(metric(logits).float().cpu())
        sources = {name: cache[name].to(target.device, target.dtype) for name in hooks}
        scores = patch_sweep(target, batch, sources, metric, component, chunk, 0, progress)
        if keep is not None:  # [layer, (head,) pos, b]: keep the last ``keep`` positions
            scores = scores[..., n_pos - keep:, :]
        parts.append(scores)
        order.extend(idx)
        tgt_m.append(run_metric(target, batch, metric))
    perm = torch.tensor(order).argsort()
    scores = torch.cat(parts, -1)[..., perm]
    result = PatchResult(component, "activation", "cross-model", scores,
                         torch.cat(src_m)[perm], torch.cat(tgt_m)[perm],
                         positions=list(range(-keep, 0)) if keep is not None else None,
                         meta={"source": source.spec, "target": target.spec})
    return result
