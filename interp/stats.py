"""Statistics shared by evaluation and the experiments: intervals, resampling, paired tests,
reliability.

- :func:`wilson`: 95 % score interval of a proportion;
- :func:`bootstrap_means` / :func:`bootstrap_ci`: percentile intervals of means, resampling the
  last axis with multinomial weights (one matmul for a grid of any size);
- :func:`mcnemar`: exact McNemar test of two classifiers scored on the same items;
- :func:`pearson`: correlation over the last axis, batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from interp.errors import ConfigError


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def resample_weights(n: int, n_boot: int, seed: int = 0) -> torch.Tensor:
    """``[n_boot, n]`` multinomial resampling weights (counts / n) of ``n`` units."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64)) / n


def bootstrap_means(values: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
    """Means of ``n_boot`` resamples (with replacement) of the last axis: ``[*lead, n_boot]``."""
    weights = resample_weights(values.shape[-1], n_boot, seed)
    return values.double() @ weights.T


def percentile_ci(samples: torch.Tensor, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval over the last axis (NaN samples ignored)."""
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.nanquantile(samples.double(), q, dim=-1)
    return low.float(), high.float()


CHUNK_BYTES = 1 << 26   # resampled means held at once by bootstrap_ci (64 MiB)


def bootstrap_ci(values: torch.Tensor, level: float = 0.95, n_boot: int = 1000,
                 seed: int = 0, statistic: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of the mean over the last axis: ``(low, high)``, each ``[*lead]``.

    ``statistic`` maps resampled means ``[rows, n_boot]`` to the quantity the interval is of
    (same shape). Rows are resampled in chunks of :data:`CHUNK_BYTES`, so memory stays bounded
    whatever ``n_boot`` and the number of rows; the numbers equal one unchunked pass (the same
    resampling weights serve every chunk, and :func:`bootstrap_means` with the same ``seed``).
    """
    lead = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1]).double()
    weights = resample_weights(flat.shape[-1], n_boot, seed).T
    step = max(1, CHUNK_BYTES // (8 * n_boot))
    lows, highs = [], []
    for start in range(0, flat.shape[0], step):
        means = flat[start:start + step] @ weights
        low, high = percentile_ci(statistic(means) if statistic else means, level)
        lows.append(low)
        highs.append(high)
    return torch.cat(lows).reshape(lead), torch.cat(highs).reshape(lead)


def mean_ci(values: Sequence[float] | torch.Tensor, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"estimate", "ci95": [low, high]}`` of a mean, by the bootstrap."""
    v = torch.as_tensor(values, dtype=torch.float64)
    low, high = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {"estimate": float(v.mean()), "ci95": [float(low), float(high)]}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of two classifiers' correctness on the same items: ``b01`` items only
    ``b`` gets right, ``b10`` only ``a``; the two-sided binomial p-value of the discordant
    split (1.0 when there are no discordant items)."""
    a, b = list(map(bool, a)), list(map(bool, b))
    if len(a) != len(b):
        raise ConfigError("McNemar needs the two conditions scored on the same items")
    b10 = sum(x and not y for x, y in zip(a, b))
    b01 = sum(y and not x for x, y in zip(a, b))
    n = b10 + b01
    if n == 0:
        p = 1.0
    else:
        k = min(b10, b01)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"n": len(a), "only_a": b10, "only_b": b01, "p_value": p,
            "difference": (sum(a) - sum(b)) / len(a) if a else float("nan")}


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last axis (batched); NaN where either side is constant."""
    a, b = a.double(), b.double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.norm(dim=-1) * b.norm(dim=-1))
    r = (a * b).sum(-1) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))
