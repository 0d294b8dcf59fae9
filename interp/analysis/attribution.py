"""Attribution patching: the first-order estimate of activation patching.

effect(component) = (a_source - a_target) . d metric / d a  at the target run, from one source
forward, one target forward and one backward pass for the whole batch (Nanda; Syed et al. 2023).
In the default ``denoise`` direction the source is the clean run and the target the corrupt one,
so the effect estimates ``patched - corrupt`` of :func:`interp.analysis.patching.activation_patch`.
"""

from __future__ import annotations

import torch

from interp.analysis.patching import COMPONENTS, grid_shape
from interp.errors import ConfigError
from interp.models import LoadedModel


def attribution_patch(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor, metric,
                      component: str = "heads", direction: str = "denoise") -> torch.Tensor:
    """Estimated effect of patching each component, per pair: ``[*grid, batch]``."""
    if component not in COMPONENTS:
        raise ConfigError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")
    bridge = model.bridge
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    hook = COMPONENTS[component]
    names = [hook.format(l) for l in range(model.n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(source, names_filter=lambda n: n in set(names))
    acts: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(act, hook=None):
            act.retain_grad()
            acts[name] = act
            return act
        return keep

    with torch.enable_grad():
        logits = bridge.run_with_hooks(target, fwd_hooks=[(n, keeper(n)) for n in names])
        metric(logits).sum().backward()  # examples are independent: d sum / d a_b = d m_b / d a_b
    B, T = target.shape
    per_layer = []
    for name in names:
        delta = (cache[name] - acts[name].detach()) * acts[name].grad
        if component == "heads":
            per_layer.append(delta.sum(dim=(1, 3)).T)             # [head, batch]
        elif component == "heads_pos":
            per_layer.append(delta.sum(dim=3).permute(2, 1, 0))   # [head, pos, batch]
        else:
            per_layer.append(delta.sum(dim=2).T)                  # [pos, batch]
    model.hf.zero_grad(set_to_none=True)
    return torch.stack(per_layer).float().cpu().reshape(*grid_shape(model, component, T), B)
