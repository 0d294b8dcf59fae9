"""The component table, in the manner of TransformerLens's ``patching.py``: for each kind of
component, the hook it lives at, the shape of its score grid, how one component is set from a
source activation, and how an activation-sized effect sums to one score per component.

Patching, ablation and attribution all read this table, and hook names are formatted here only.
Components are named ``L{layer}H{head}`` (heads), ``L{layer}MLP`` (MLPs); position-indexed ones
get ``@{position}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from interp.errors import ConfigError
from interp.names import head_name, mlp_name, parse_name  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class ComponentKind:
    name: str
    hook: str                     # hook-name template, formatted with the layer
    per_head: bool
    per_position: bool
    label: str                    # how a component of this kind is named (before @pos)

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer)

    def hook_names(self, n_layers: int) -> list[str]:
        return [self.hook_name(l) for l in range(n_layers)]

    def grid_shape(self, n_layers: int, n_heads: int, n_pos: int) -> tuple[int, ...]:
        shape = (n_layers,)
        if self.per_head:
            shape += (n_heads,)
        if self.per_position:
            shape += (n_pos,)
        return shape

    def grid(self, n_layers: int, n_heads: int, n_pos: int) -> list[tuple[int, ...]]:
        """Index tuples in grid order: (layer, [head,] [pos])."""
        shape = self.grid_shape(n_layers, n_heads, n_pos)
        return [tuple(int(i) for i in idx) for idx in torch.cartesian_prod(
            *[torch.arange(s) for s in shape]).reshape(-1, len(shape)).tolist()]

    def set(self, act: torch.Tensor, rows: slice, index: tuple, src: torch.Tensor) -> None:
        """Set one component of ``act`` (rows ``rows``) from ``src`` (the source batch).
        Head activations are ``[batch, pos, head, d_head]``, others ``[batch, pos, d]``;
        positions in ``index`` count from the activation's first position."""
        if self.per_head and self.per_position:
            act[rows, index[2], index[1]] = src[:, index[2], index[1]]
        elif self.per_head:
            act[rows, :, index[1]] = src[:, :, index[1]]
        else:
            act[rows, index[1]] = src[:, index[1]]

    def reduce(self, delta: torch.Tensor) -> torch.Tensor:
        """An effect the size of the activation ``[batch, pos, ...]`` summed to one score per
        component of a layer: ``[head,] [pos,] batch``."""
        if self.per_head and self.per_position:
            return delta.sum(dim=3).permute(2, 1, 0)
        if self.per_head:
            return delta.sum(dim=(1, 3)).T
        return delta.sum(dim=2).T

    def names(self, n_layers: int, n_heads: int, positions=None) -> list[str]:
        n_pos = len(positions) if positions is not None else 0
        out = []
        for idx in self.grid(n_layers, n_heads, max(n_pos, 1)):
            name = self.label.format(l=idx[0], h=idx[1] if self.per_head else 0)
            if self.per_position:
                name += f"@{positions[idx[-1]]}"
            out.append(name)
        return out


COMPONENT_KINDS: dict[str, ComponentKind] = {
    "heads": ComponentKind("heads", "blocks.{}.attn.hook_z", True, False, "L{l}H{h}"),
    "heads_pos": ComponentKind("heads_pos", "blocks.{}.attn.hook_z", True, True, "L{l}H{h}"),
    "resid": ComponentKind("resid", "blocks.{}.hook_resid_pre", False, True, "L{l}RESID"),
    "attn": ComponentKind("attn", "blocks.{}.hook_attn_out", False, True, "L{l}ATTN"),
    "mlp": ComponentKind("mlp", "blocks.{}.hook_mlp_out", False, True, "L{l}MLP"),
}
COMPONENTS = tuple(COMPONENT_KINDS)


def kind(name: str) -> ComponentKind:
    if name not in COMPONENT_KINDS:
        raise ConfigError(f"unknown component {name!r}; choose one of {', '.join(COMPONENT_KINDS)}")
    return COMPONENT_KINDS[name]


def resid_hook(layer: int) -> str:
    return COMPONENT_KINDS["resid"].hook_name(layer)


def hook_names(n_layers: int, kinds=("heads", "mlp")) -> list[str]:
    """Every layer's hook of each of ``kinds``, kind by kind (heads' ``hook_z``, MLP outputs)."""
    return [name for k in kinds for name in COMPONENT_KINDS[k].hook_names(n_layers)]


class Component(NamedTuple):
    """One scored component: its name (``L3H5``, ``L3MLP``, ``L3RESID@-2``), layer, head (None
    for whole-layer components), position (None unless position-indexed) and value."""

    name: str
    layer: int
    head: int | None
    position: int | None
    value: float
