"""Per-pair patching scores with means, normalised effects and bootstrap confidence intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def bootstrap_means(values: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
    """Means of ``n_boot`` resamples (with replacement) of the last axis: ``[*lead, n_boot]``.

    Resampling is done with multinomial count weights, so a grid of any size costs one matmul.
    """
    n = values.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    weights = torch.zeros(n_boot, n).scatter_add_(1, idx, torch.ones(n_boot, n)) / n
    return values.double() @ weights.double().T


def bootstrap_ci(values: torch.Tensor, level: float = 0.95, n_boot: int = 1000,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of the mean over the last axis: ``(low, high)``, each ``[*lead]``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = bootstrap_means(values, n_boot, seed)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=means.dtype)
    low, high = torch.quantile(means, q, dim=-1)
    return low.float(), high.float()


def normalize(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor,
              eps: float = 1e-8) -> torch.Tensor:
    """(patched - corrupt) / (clean - corrupt) on means over the last axis."""
    c, k = clean.mean(-1), corrupt.mean(-1)
    denom = c - k
    denom = torch.where(denom.abs() < eps, torch.full_like(denom, eps), denom)
    return (patched.mean(-1) - k) / denom


@dataclass
class PatchResult:
    """Scores of one component sweep over n pairs.

    ``scores[..., i]`` is the metric of pair i's patched run (for attribution: the estimate of
    it, corrupt baseline + first-order effect); ``clean``/``corrupt`` are the unpatched metrics.
    ``mean`` is what ``transformer_lens.patching`` returns for the same batch.
    """

    component: str
    method: str
    direction: str
    scores: torch.Tensor
    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: list[int] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.scores.shape[-1])

    @property
    def mean(self) -> torch.Tensor:
        return self.scores.mean(-1)

    @property
    def normalized(self) -> torch.Tensor:
        """1 = the patch restores the clean metric (denoising), 0 = no effect."""
        return normalize(self.scores, self.clean, self.corrupt)

    def ci(self, normalized: bool = False, level: float = 0.95, n_boot: int = 1000,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Bootstrap interval over pairs of :attr:`mean` (or :attr:`normalized`)."""
        if not normalized:
            return bootstrap_ci(self.scores, level, n_boot, seed)
        flat = self.scores.reshape(-1, self.n)  # one resample shared by scores and baselines
        means = bootstrap_means(torch.cat([flat, self.clean[None], self.corrupt[None]]), n_boot,
                                seed)
        patched, c, k = means[:-2], means[-2], means[-1]
        denom = torch.where((c - k).abs() < 1e-8, torch.full_like(c, 1e-8), c - k)
        ratios = (patched - k) / denom
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=ratios.dtype)
        low, high = torch.quantile(ratios, q, dim=-1)
        shape = self.scores.shape[:-1]
        return low.float().reshape(shape), high.float().reshape(shape)

    def baselines(self, n_boot: int = 1000, seed: int = 0) -> dict:
        out = {}
        for name, values in (("clean", self.clean), ("corrupt", self.corrupt)):
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            out[name] = {"mean": float(values.mean()), "ci95": [float(low), float(high)]}
        return out

    def tensors(self, n_boot: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
        """Named tensors for ``scores.safetensors``: ``<component>``, ``<component>_normalized``,
        their 95 % bootstrap bounds, and the per-pair scores."""
        c = self.component
        low, high = self.ci(n_boot=n_boot, seed=seed)
        nlow, nhigh = self.ci(normalized=True, n_boot=n_boot, seed=seed)
        return {c: self.mean, f"{c}_normalized": self.normalized,
                f"{c}_ci_low": low, f"{c}_ci_high": high,
                f"{c}_normalized_ci_low": nlow, f"{c}_normalized_ci_high": nhigh,
                f"{c}_per_pair": self.scores}

    def top(self, k: int = 10, normalized: bool = True) -> list[dict]:
        """The k components with the largest absolute effect, with their indices."""
        values = self.normalized if normalized else self.mean - self.corrupt.mean()
        flat = values.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        shape = values.shape
        rows = []
        for i in order.tolist():
            index = torch.unravel_index(torch.tensor(i), shape)
            rows.append({"index": [int(v) for v in index], "value": float(flat[i])})
        return rows
