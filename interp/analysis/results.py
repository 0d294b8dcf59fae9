"""Per-pair patching scores with means, normalised effects and bootstrap confidence intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.analysis.components import kind
from interp.analysis.metrics import normalized_effect
from interp.results import Result
from interp.stats import bootstrap_ci, bootstrap_means


def normalize(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor,
              eps: float = 1e-8) -> torch.Tensor:
    """(patched - corrupt) / (clean - corrupt) on means over the last axis."""
    return normalized_effect(patched.mean(-1), clean.mean(-1), corrupt.mean(-1), eps)


@dataclass
class PatchResult(Result):
    """Scores of one component sweep over n pairs.

    ``scores[..., i]`` is the metric of pair i's patched run (for attribution: the estimate of
    it, corrupt baseline + first-order effect); ``clean``/``corrupt`` are the unpatched metrics.
    ``mean`` is what ``transformer_lens.patching`` returns for the same batch. ``to_frame()``
    has one row per component: ``value`` = mean, its bootstrap interval, and ``normalized``.
    """

    component: str
    method: str
    direction: str
    scores: torch.Tensor
    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: list[int] | None = None
    meta: dict = field(default_factory=dict)

    file_stem = "patch"

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
        # one resample shared by the scores and the clean/corrupt baselines (same seed)
        c, k = bootstrap_means(torch.stack([self.clean, self.corrupt]), n_boot, seed)
        denom = torch.where((c - k).abs() < 1e-8, torch.full_like(c, 1e-8), c - k)
        return bootstrap_ci(self.scores, level, n_boot, seed,
                            statistic=lambda means: (means - k) / denom)

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

    def to_frame(self, n_boot: int = 1000, seed: int = 0):
        import pandas as pd

        spec = kind(self.component)
        L = self.scores.shape[0]
        H = self.scores.shape[1] if spec.per_head else 1
        positions = self.positions if spec.per_position else None
        if spec.per_position and positions is None:
            positions = list(range(self.scores.shape[-2]))
        names = spec.names(L, H, positions)
        grid = spec.grid(L, H, len(positions) if positions else 1)
        low, high = self.ci(n_boot=n_boot, seed=seed)
        rows = []
        for name, idx, v, lo, hi, nv in zip(names, grid, self.mean.flatten().tolist(),
                                            low.flatten().tolist(), high.flatten().tolist(),
                                            self.normalized.flatten().tolist()):
            rows.append({"component": name, "layer": idx[0],
                         "head": idx[1] if spec.per_head else None,
                         "position": positions[idx[-1]] if spec.per_position else None,
                         "value": v, "ci_low": lo, "ci_high": hi, "normalized": nv})
        return pd.DataFrame(rows)

    def _tensors(self):
        return {"scores": self.scores, "clean": self.clean, "corrupt": self.corrupt}

    def _meta(self):
        return {"component": self.component, "method": self.method,
                "direction": self.direction, "positions": self.positions, "meta": self.meta}

    @classmethod
    def _from(cls, tensors, meta):
        return cls(meta["component"], meta["method"], meta["direction"], tensors["scores"],
                   tensors["clean"], tensors["corrupt"], meta.get("positions"),
                   meta.get("meta") or {})
