"""Patching results as figures."""

from __future__ import annotations


def patch_heatmap(result, title: str):
    """A PatchResult's normalised effects as a heatmap (heads_pos averaged over heads)."""
    from interp.plots import heatmap

    c = result.component
    values = result.normalized if c != "heads_pos" else result.normalized.mean(1)
    return heatmap(values, title, "head" if c == "heads" else "position",
                   x_labels=result.positions if c != "heads" else None, hover="normalised effect")


def dla_heatmap(dla):
    """Direct logit attribution per head, ``[layer, head, pair]``, averaged over pairs."""
    from interp.plots import heatmap

    return heatmap(dla.mean(-1), "direct logit attribution per head (clean prompts)", "head",
                   hover="logit diff")


def ablation_heatmap(drop, mode: str):
    """Each head's ``mode``-ablation importance, ``[layer, head, pair]``, averaged over pairs."""
    from interp.plots import heatmap

    return heatmap(drop.mean(-1), f"{mode}-ablation importance per head (metric drop on clean "
                                  "prompts)", "head", hover="metric drop")
