"""Component names, the one convention every module shares: ``L{layer}H{head}`` for a head,
``L{layer}MLP`` for an MLP (a position, where one applies, after ``@``). A leaf module, so that
maps and distances (``circuits.py``) name components without importing the analysis. The
ranking of components by the size of a score lives here too, so every ranking breaks ties alike."""

from __future__ import annotations

import torch


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def mlp_name(layer: int) -> str:
    return f"L{layer}MLP"


def largest(values: torch.Tensor, k: int) -> list[int]:
    """Flat indices of the ``k`` largest ``|values|``, largest first (ties: lower index first)."""
    return values.flatten().abs().argsort(descending=True, stable=True)[:k].tolist()


def top_heads(grid: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads of a ``[layer, head]`` grid with the largest ``|score|``, as (layer,
    head), largest first."""
    return [divmod(i, grid.shape[1]) for i in largest(grid, k)]


def parse_name(name: str) -> tuple[int, int | None]:
    """``L3H5`` -> (3, 5); ``L3MLP`` -> (3, None)."""
    body = name.split("@")[0]
    if body.endswith("MLP"):
        return int(body[1:-3]), None
    layer, head = body[1:].split("H")
    return int(layer), int(head)
