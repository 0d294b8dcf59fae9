"""Circuits as scored components, and the distances between two conditions' circuits.

A score map is ``heads [n_layers, n_heads]`` plus ``mlp [n_layers]`` (the normalised effect of
each component on the task's logit difference). Components are named ``L{l}H{h}`` and
``L{l}MLP``; flat vectors put all heads first (layer-major), then the MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import hypergeom, spearmanr


@dataclass
class ScoreMap:
    heads: torch.Tensor   # [layer, head]
    mlp: torch.Tensor     # [layer]

    @property
    def flat(self) -> torch.Tensor:
        return torch.cat([self.heads.flatten(), self.mlp.flatten()]).float()

    @property
    def names(self) -> list[str]:
        L, H = self.heads.shape
        return [f"L{l}H{h}" for l in range(L) for h in range(H)] + [f"L{l}MLP" for l in range(L)]

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest absolute score, as (layer, head), largest first."""
        H = self.heads.shape[1]
        order = self.heads.flatten().abs().argsort(descending=True)[:k]
        return [divmod(int(i), H) for i in order]

    def per_layer(self) -> torch.Tensor:
        """Summed absolute score per layer (heads and MLP): ``[layer]``."""
        return self.heads.abs().sum(-1) + self.mlp.abs()


def top_k(scores: ScoreMap, k: int) -> set[int]:
    """Flat indices of the k components with the largest absolute score."""
    k = min(k, scores.flat.numel())
    return set(scores.flat.abs().argsort(descending=True)[:k].tolist())


def components(scores: ScoreMap, idx: set[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Split flat indices into ``(heads [(layer, head)], mlps [layer])``."""
    L, H = scores.heads.shape
    heads = sorted((i // H, i % H) for i in idx if i < L * H)
    mlps = sorted(i - L * H for i in idx if i >= L * H)
    return heads, mlps


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def overlap_pvalue(k_a: int, k_b: int, overlap: int, total: int) -> float:
    """P(overlap >= observed) for two random sets of sizes k_a, k_b out of ``total``."""
    return float(hypergeom.sf(overlap - 1, total, k_a, k_b))


def directional_overlap(a: ScoreMap, b: ScoreMap, k: int) -> float:
    """Share of the top-k components of ``a`` that are in ``b``'s top-k with the same sign."""
    ia, ib = top_k(a, k), top_k(b, k)
    fa, fb = a.flat, b.flat
    same = [i for i in ia & ib if torch.sign(fa[i]) == torch.sign(fb[i])]
    return len(same) / max(1, len(ia))


def spearman(a: ScoreMap, b: ScoreMap) -> float:
    return float(spearmanr(a.flat.numpy(), b.flat.numpy()).statistic)


def layer_shift(a: ScoreMap, b: ScoreMap) -> torch.Tensor:
    """L1 distance of the score maps per layer: ``[layer]``."""
    return (a.heads - b.heads).abs().sum(-1) + (a.mlp - b.mlp).abs()


def shift_magnitude(a: ScoreMap, b: ScoreMap) -> float:
    """Total L1 distance relative to the two maps' mean total mass (scale-free)."""
    mass = 0.5 * (a.flat.abs().sum() + b.flat.abs().sum())
    return float((a.flat - b.flat).abs().sum() / mass.clamp_min(1e-12))


def distances(a: ScoreMap, b: ScoreMap, ks=(5, 10, 20)) -> dict:
    """Every distance between two score maps; ``shift`` = 1 - Spearman (the headline one)."""
    total = a.flat.numel()
    out = {"spearman": spearman(a, b), "magnitude": shift_magnitude(a, b)}
    out["shift"] = 1.0 - out["spearman"]
    for k in ks:
        ia, ib = top_k(a, k), top_k(b, k)
        out[f"jaccard@{k}"] = jaccard(ia, ib)
        out[f"directional@{k}"] = directional_overlap(a, b, k)
        out[f"overlap_p@{k}"] = overlap_pvalue(len(ia), len(ib), len(ia & ib), total)
    return out
