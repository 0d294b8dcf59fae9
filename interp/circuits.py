"""Circuits as scored components, and the distances between two conditions' circuits.

A score map is ``heads [n_layers, n_heads]`` and optionally ``mlp [n_layers]`` (each component's
effect on the task's logit difference, in logit units). Components are named ``L{l}H{h}`` and
``L{l}MLP``; flat vectors put all heads first (layer-major), then the MLPs.

Distances: :func:`disattenuated` (the headline: 1 - r_ab / sqrt(r_a r_b), Pearson corrected for
each map's own measurement noise), :func:`spearman`, top-k :func:`jaccard`, rank-biased overlap
(:func:`rbo`), the exact permutation null of a top-k overlap (:func:`overlap_pvalue`), and the
per-layer L1 shift.

If you add a distance: a function here and its entry in :func:`distances` (every run's
``results.json["distances"]`` and the report's table then carry it). The verdict's distance is
the disattenuated one, bootstrapped in :mod:`interp.shift.estimator`; a new headline distance
replaces the statistic there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import hypergeom, spearmanr

from interp.names import head_name, largest, mlp_name, top_heads
from interp.results import Result
from interp.stats import pearson


@dataclass
class ScoreMap(Result):
    """``heads [layer, head]`` and optionally ``mlp [layer]``, with optional interval bounds
    ``heads_ci`` / ``mlp_ci`` (``[2, ...]``: low, high)."""

    heads: torch.Tensor
    mlp: torch.Tensor | None = None
    heads_ci: torch.Tensor | None = None
    mlp_ci: torch.Tensor | None = None

    file_stem = "scoremap"

    @property
    def flat(self) -> torch.Tensor:
        parts = [self.heads.flatten()] + ([self.mlp.flatten()] if self.mlp is not None else [])
        return torch.cat(parts).float()

    @property
    def names(self) -> list[str]:
        L, H = self.heads.shape
        out = [head_name(l, h) for l in range(L) for h in range(H)]
        return out + ([mlp_name(l) for l in range(L)] if self.mlp is not None else [])

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest absolute score, as (layer, head), largest first."""
        return top_heads(self.heads, k)

    def per_layer(self) -> torch.Tensor:
        """Summed absolute score per layer (heads and MLP): ``[layer]``."""
        out = self.heads.abs().sum(-1)
        return out + self.mlp.abs() if self.mlp is not None else out

    def to_frame(self):
        import pandas as pd

        L, H = self.heads.shape
        rows = []
        for l in range(L):
            for h in range(H):
                ci = self.heads_ci[:, l, h].tolist() if self.heads_ci is not None else [None] * 2
                rows.append({"component": head_name(l, h), "layer": l, "head": h,
                             "value": float(self.heads[l, h]), "ci_low": ci[0], "ci_high": ci[1]})
        if self.mlp is not None:
            for l in range(L):
                ci = self.mlp_ci[:, l].tolist() if self.mlp_ci is not None else [None] * 2
                rows.append({"component": mlp_name(l), "layer": l, "head": None,
                             "value": float(self.mlp[l]), "ci_low": ci[0], "ci_high": ci[1]})
        return pd.DataFrame(rows)

    def _tensors(self):
        return {k: v for k, v in (("heads", self.heads), ("mlp", self.mlp),
                                  ("heads_ci", self.heads_ci), ("mlp_ci", self.mlp_ci))
                if v is not None}

    @classmethod
    def _from(cls, tensors, meta):
        return cls(tensors["heads"], tensors.get("mlp"), tensors.get("heads_ci"),
                   tensors.get("mlp_ci"))


def top_k(scores: ScoreMap, k: int) -> list[int]:
    """Flat indices of the k components with the largest absolute score, largest first."""
    k = min(k, scores.flat.numel())
    return largest(scores.flat, k)


def components(scores: ScoreMap, idx) -> tuple[list[tuple[int, int]], list[int]]:
    """Split flat indices into ``(heads [(layer, head)], mlps [layer])``."""
    L, H = scores.heads.shape
    heads = sorted((i // H, i % H) for i in idx if i < L * H)
    mlps = sorted(i - L * H for i in idx if i >= L * H)
    return heads, mlps


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def overlap_pvalue(k_a: int, k_b: int, overlap: int, total: int) -> float:
    """P(overlap >= observed) for two random sets of sizes k_a, k_b out of ``total``: the exact
    permutation null of a top-k overlap (component labels shuffled)."""
    return float(hypergeom.sf(overlap - 1, total, k_a, k_b))


def rbo(a: ScoreMap, b: ScoreMap, p: float = 0.9, depth: int | None = None) -> float:
    """Rank-biased overlap of the two rankings by absolute score (Webber et al. 2010), truncated
    at ``depth`` (default: all components) and normalised so identical rankings score 1."""
    ra, rb = top_k(a, a.flat.numel()), top_k(b, b.flat.numel())
    depth = depth or len(ra)
    seen_a, seen_b, total, weight = set(), set(), 0.0, 0.0
    for d in range(1, depth + 1):
        seen_a.add(ra[d - 1])
        seen_b.add(rb[d - 1])
        w = p ** (d - 1)
        total += w * len(seen_a & seen_b) / d
        weight += w
    return total / weight


def directional_overlap(a: ScoreMap, b: ScoreMap, k: int) -> float:
    """Share of the top-k components of ``a`` that are in ``b``'s top-k with the same sign."""
    ia, ib = set(top_k(a, k)), set(top_k(b, k))
    fa, fb = a.flat, b.flat
    same = [i for i in ia & ib if torch.sign(fa[i]) == torch.sign(fb[i])]
    return len(same) / max(1, len(ia))


def spearman(a: ScoreMap, b: ScoreMap) -> float:
    return float(spearmanr(a.flat.numpy(), b.flat.numpy()).statistic)


def correlation(a: ScoreMap, b: ScoreMap) -> float:
    return float(pearson(a.flat, b.flat))


def disattenuated(r_ab: float, r_a: float, r_b: float) -> float:
    """1 - r_ab / sqrt(r_a r_b): the correlation of two maps corrected for the unreliability of
    each (Spearman's correction), as a distance; ~0 for the same map measured twice, ~1 for
    unrelated maps. Not clipped; NaN when a reliability is not positive."""
    from interp.shift.estimator import correlation  # the one disattenuation (the verdict's)

    true_cov = torch.tensor([[r_a, r_ab], [r_ab, r_b]], dtype=torch.float64)
    return float(1.0 - correlation(true_cov, 0, 1))


def layer_shift(a: ScoreMap, b: ScoreMap) -> torch.Tensor:
    """L1 distance of the score maps per layer: ``[layer]``."""
    out = (a.heads - b.heads).abs().sum(-1)
    if a.mlp is not None and b.mlp is not None:
        out = out + (a.mlp - b.mlp).abs()
    return out


def distances(a: ScoreMap, b: ScoreMap, ks=(5, 10, 20)) -> dict:
    """The descriptive distances between two maps: Pearson, Spearman, top-k Jaccard (with its
    exact permutation-null p-value), directional overlap, and rank-biased overlap."""
    total = a.flat.numel()
    out = {"pearson": correlation(a, b), "spearman": spearman(a, b), "rbo": rbo(a, b)}
    for k in ks:
        ia, ib = set(top_k(a, k)), set(top_k(b, k))
        out[f"jaccard@{k}"] = jaccard(ia, ib)
        out[f"directional@{k}"] = directional_overlap(a, b, k)
        out[f"overlap_p@{k}"] = overlap_pvalue(len(ia), len(ib), len(ia & ib), total)
    return out
