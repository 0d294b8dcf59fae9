"""Correlations of mean maps that stay unbiased when every condition is scored on the same pairs.

Each condition (and replicate seed) is a *series*: per-pair component scores ``x [K, N]`` (K
components, N pairs shared by every series). Its map is the mean over pairs. Every pair moves
all series at once (the same prompt), so the maps' sampling errors are correlated across
series, and Spearman's correction, which assumes independent errors, biases every correlation
(towards 1 for a condition that resembles base-zs). Here the covariance across components of
two *true* maps is estimated with the error covariance subtracted:

    C_st = 1/(K-1) sum_k [ m_sk m_tk - s_st,k / N ]

with ``m`` the maps centred across components (each pair's scores are centred first, so the
centring is exact) and ``s_st,k`` the covariance over pairs of series s and t at component k
(unbiased, N - 1 in the denominator). ``C_ss`` is the true map's variance (a variance
component), the reliability of a map is ``C_ss / V_ss`` (``V``: the observed map's variance),
and the disattenuated correlation is ``C_st / sqrt(C_ss C_tt)`` (what remains is the small
ratio bias, measured by ``interp calibrate``).

Resampling pairs with weights ``w`` (rows summing to 1) computes the same estimator on every
resample. Intervals are *basic* bootstrap intervals: the resample estimates minus the value the
statistic has in the resampled population (the full sample, taken as the truth:
:func:`population`), reflected around the point estimate, because the corrected estimator is
centred on the truth while resamples of it are centred on the plug-in value of the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum


@dataclass
class Moments:
    """Per-pair-weighted moments of S series: ``M [B, S, S]`` = sum over components of the
    products of the centred maps; ``P [B, S, S]`` = the pair covariance summed over
    components (population form: weights, no N - 1); ``N`` pairs, ``K`` components."""

    M: torch.Tensor
    P: torch.Tensor
    N: int
    K: int

    def true_cov(self) -> torch.Tensor:
        """The estimator ``C`` (unbiased covariance of the true maps) ``[B, S, S]``."""
        return (self.M - self.P / (self.N - 1)) / (self.K - 1)

    def observed_cov(self) -> torch.Tensor:
        return self.M / (self.K - 1)


def centred(x: torch.Tensor) -> torch.Tensor:
    """Per-pair scores ``[S, K, N]`` centred across components (per series and pair)."""
    x = x.double()
    return x - x.mean(1, keepdim=True)


def moments(y: torch.Tensor, w: torch.Tensor) -> Moments:
    """Moments of centred scores ``y [S, K, N]`` under pair weights ``w [B, N]`` (rows sum
    to 1)."""
    S, K, N = y.shape
    maps = einsum(y, w, "s k n, b n -> b s k")
    M = einsum(maps, maps, "b s k, b t k -> b s t")
    gram = einsum(y, y, "s k n, t k n -> s t n")
    P = einsum(gram, w, "s t n, b n -> b s t") - M
    return Moments(M, P, N, K)


def uniform_weights(n: int) -> torch.Tensor:
    """The sample itself as a "resample": ``[1, n]`` weights 1/n."""
    return torch.full((1, n), 1.0 / n, dtype=torch.float64)


def sample_moments(y: torch.Tensor) -> Moments:
    """:func:`moments` of the sample as drawn (one row)."""
    return moments(y, uniform_weights(y.shape[-1]))


def population(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, V)`` ``[S, S]`` of the resampled population (the sample itself): the true maps
    are the sample's maps, and a resample of N pairs adds ``P / N`` to their observed
    covariance."""
    m = sample_moments(y)
    C = m.M[0] / (m.K - 1)
    return C, C + m.P[0] / m.N / (m.K - 1)


def correlation(C: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """Disattenuated correlation of series s and t from ``C [..., S, S]``; NaN where a true
    variance is not positive."""
    den = C[..., s, s] * C[..., t, t]
    r = C[..., s, t] / den.clamp_min(1e-300).sqrt()
    return torch.where((C[..., s, s] > 0) & (C[..., t, t] > 0), r, torch.full_like(r, torch.nan))


def reliability(C: torch.Tensor, V: torch.Tensor, s: int) -> torch.Tensor:
    """Share of the observed map's variance across components that the true map explains."""
    v = V[..., s, s]
    return torch.where(v > 0, C[..., s, s] / v.clamp_min(1e-300), torch.full_like(v, torch.nan))


@dataclass
class Stat:
    """One statistic for each replicate seed of its family: ``point [R]``, resamples
    ``boot [B, R]`` and the value in the resampled population ``truth [R]``. Statistics of
    different families (demonstration seeds, fine-tuning seeds) add as independent terms."""

    point: dict[str, torch.Tensor]
    boot: dict[str, torch.Tensor]
    truth: dict[str, torch.Tensor]

    @classmethod
    def of(cls, family: str, point, boot, truth) -> Stat:
        return cls({family: point}, {family: boot}, {family: truth})

    def _combine(self, other: Stat, sign: float) -> Stat:
        out = Stat(dict(self.point), dict(self.boot), dict(self.truth))
        for f in other.point:
            if f in out.point:
                r = min(out.point[f].shape[-1], other.point[f].shape[-1])
                out.point[f] = out.point[f][..., :r] + sign * other.point[f][..., :r]
                out.boot[f] = out.boot[f][..., :r] + sign * other.boot[f][..., :r]
                out.truth[f] = out.truth[f][..., :r] + sign * other.truth[f][..., :r]
            else:
                out.point[f] = sign * other.point[f]
                out.boot[f] = sign * other.boot[f]
                out.truth[f] = sign * other.truth[f]
        return out

    def __add__(self, other: Stat) -> Stat:
        return self._combine(other, 1.0)

    def __sub__(self, other: Stat) -> Stat:
        return self._combine(other, -1.0)


def mean_stat(values: torch.Tensor, w: torch.Tensor, family: str) -> Stat:
    """The mean over units of per-seed values ``[R, Q]`` (e.g. correctness on Q queries), with
    units resampled by ``w [B, Q]`` (shared by every seed)."""
    v = values.double()
    return Stat.of(family, v.mean(-1), (v @ w.T).T, v.mean(-1))
