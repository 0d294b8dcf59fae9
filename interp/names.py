"""Component names, the one convention every module shares: ``L{layer}H{head}`` for a head,
``L{layer}MLP`` for an MLP (a position, where one applies, after ``@``). A leaf module, so that
maps and distances (``circuits.py``) name components without importing the analysis."""

from __future__ import annotations


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def mlp_name(layer: int) -> str:
    return f"L{layer}MLP"


def parse_name(name: str) -> tuple[int, int | None]:
    """``L3H5`` -> (3, 5); ``L3MLP`` -> (3, None)."""
    body = name.split("@")[0]
    if body.endswith("MLP"):
        return int(body[1:-3]), None
    layer, head = body[1:].split("H")
    return int(layer), int(head)
