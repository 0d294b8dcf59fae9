"""From per-pair component scores to shifts, effects against shams, and their intervals.

- A condition's **map** is the mean over pairs of its per-pair component scores (heads then
  MLPs, logit units). Its **reliability** is the split-half correlation of the map over unique
  pairs, stepped up by Spearman-Brown, averaged over ``n_splits`` random splits.
- **Gates**: a condition whose clean-corrupt gap interval does not lie above 0, or whose
  reliability interval does not lie above 0.2, has no circuit to compare; distances to it are
  undefined (``None`` with a ``reason``).
- The **distance** of two maps is disattenuated: 1 - r_ab / sqrt(r_a r_b) (Pearson across
  components; reliabilities not clipped). The **shift** of a condition is its distance to
  base-zs, averaged over replicates.
- **Effects**: effect(icl) = shift(base-icl) - shift(base-icl-other-task), effect(ft) =
  shift(ft-zs) - shift(ft-other-task), and their difference (primary); the same with the
  shuffled shams (secondary; ft-random-delta where ft-shuffled fails its gate); and the
  direct distances of each real condition to its shams.
- **Intervals**: percentile bootstrap. Pairs are resampled once per resample and the same
  resample serves every condition (so differences keep their pairing); with several
  demonstration or fine-tuning seeds the bootstrap is hierarchical (seeds, then pairs).
- **Noise floor**: for every condition, the distance between the maps of two disjoint sets of
  n pairs (the same n the shifts use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.shift.config import GAP_GATE, RELIABILITY_GATE, SHAMS
from interp.stats import pearson, percentile_ci, resample_weights, split_half

BOOTSTRAP_METHOD = ("percentile bootstrap: pairs resampled with replacement, one resample shared "
                    "by every condition{seeds}; {n_boot} resamples")


@dataclass
class Bootstrap:
    """Resample weights: pairs of set A (``a``) and B (``b``), ``[n_boot, n]``; replicate seeds
    of the ICL and FT conditions, ``[n_boot, n_seeds]`` (rows sum to 1)."""

    a: torch.Tensor
    b: torch.Tensor
    icl: torch.Tensor
    ft: torch.Tensor

    @classmethod
    def draw(cls, n_pairs: int, n_boot: int, demo_seeds: int, ft_seeds: int, seed: int = 0):
        def reps(k, s):
            return resample_weights(k, n_boot, s) if k > 1 else torch.ones(n_boot, 1).double()
        return cls(resample_weights(n_pairs, n_boot, seed), resample_weights(n_pairs, n_boot,
                                                                             seed + 1),
                   reps(demo_seeds, seed + 2), reps(ft_seeds, seed + 3))

    def seeds(self, condition: str) -> torch.Tensor:
        if condition.startswith(("base-icl", "icl@")):
            return self.icl
        if condition.startswith("ft"):
            return self.ft
        return torch.ones(self.a.shape[0], 1, dtype=torch.float64)


def interval(samples: torch.Tensor, estimate: float | None, **extra) -> dict:
    """``{"estimate", "ci95", ...}`` from bootstrap samples (NaN samples left out and counted)."""
    finite = torch.isfinite(samples)
    if estimate is None or not finite.any() or estimate != estimate:
        return {"estimate": None, "ci95": None, **extra}
    low, high = percentile_ci(samples[finite])
    out = {"estimate": float(estimate), "ci95": [float(low), float(high)], **extra}
    if not finite.all():
        out["undefined_resamples"] = int((~finite).sum())
    return out


class Maps:
    """Per-pair scores of one condition's replicates on pair sets A and B: ``x[r]`` is
    ``[n_components, 2n]``; ``gaps[r]`` is ``[2n]``."""

    def __init__(self, name: str, x: list[torch.Tensor], gaps: list[torch.Tensor], n: int,
                 boot: Bootstrap, n_splits: int, seed: int):
        self.name, self.n = name, n
        x = [v.double() for v in x]
        self.x_a = [v[:, :n] for v in x]
        self.x_b = [v[:, n:2 * n] for v in x]
        self.gap_a = [g[:n].double() for g in gaps]
        self.rep = boot.seeds(name)                     # [n_boot, R]
        self.point = [v.mean(-1) for v in self.x_a]
        self.rel = [float(split_half(v, n_splits, seed)) for v in self.x_a]
        self.boot_map = [v @ boot.a.T for v in self.x_a]                     # [C, n_boot]
        self.boot_rel = [split_half(v, n_splits, seed, boot.a).double() for v in self.x_a]
        self.has_b = all(v.shape[1] == n for v in self.x_b)
        if self.has_b:
            self.point_b = [v.mean(-1) for v in self.x_b]
            self.rel_b = [float(split_half(v, n_splits, seed)) for v in self.x_b]
            self.boot_map_b = [v @ boot.b.T for v in self.x_b]
            self.boot_rel_b = [split_half(v, n_splits, seed, boot.b).double() for v in self.x_b]

    def pooled(self, per_rep: list[torch.Tensor]) -> torch.Tensor:
        """Replicate-weighted mean of per-replicate bootstrap samples ``[n_boot]``."""
        return (torch.stack(per_rep, -1) * self.rep).sum(-1) / self.rep.sum(-1)

    def gap(self, boot: Bootstrap) -> dict:
        point = float(torch.stack([g.mean() for g in self.gap_a]).mean())
        return interval(self.pooled([g @ boot.a.T for g in self.gap_a]), point)

    def reliability(self) -> dict:
        return interval(self.pooled(self.boot_rel), sum(self.rel) / len(self.rel))

    def noise_floor(self) -> dict:
        if not self.has_b:
            return {"estimate": None, "ci95": None, "reason": "fewer than 2n pairs"}
        point = sum(_dist(a, b, ra, rb) for a, b, ra, rb in
                    zip(self.point, self.point_b, self.rel, self.rel_b)) / len(self.point)
        samples = self.pooled([_dist_boot(a, b, ra, rb) for a, b, ra, rb in zip(
            self.boot_map, self.boot_map_b, self.boot_rel, self.boot_rel_b)])
        return interval(samples, point, n_pairs=self.n)


def _dist(a: torch.Tensor, b: torch.Tensor, ra: float, rb: float) -> float:
    if not (ra > 0 and rb > 0):
        return float("nan")
    return 1.0 - float(pearson(a, b)) / (ra * rb) ** 0.5


def _dist_boot(a: torch.Tensor, b: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor
               ) -> torch.Tensor:
    """Disattenuated distances per resample: ``a``, ``b`` ``[C, n_boot]``, ``ra``, ``rb``
    ``[n_boot]``."""
    r = pearson(a.T, b.T)
    den = (ra * rb).clamp_min(0).sqrt()
    out = 1.0 - r / den
    return torch.where((ra > 0) & (rb > 0), out, torch.full_like(out, float("nan")))


def distance(x: Maps, y: Maps) -> tuple[float, torch.Tensor]:
    """Point estimate and bootstrap samples of d(x, y), averaged over replicate combinations
    (weighted by each resample's replicate weights)."""
    points, samples, weights = [], [], []
    for i in range(len(x.point)):
        for j in range(len(y.point)):
            points.append(_dist(x.point[i], y.point[j], x.rel[i], y.rel[j]))
            samples.append(_dist_boot(x.boot_map[i], y.boot_map[j], x.boot_rel[i],
                                      y.boot_rel[j]))
            weights.append(x.rep[:, i] * y.rep[:, j])
    w = torch.stack(weights, -1)
    s = torch.stack(samples, -1)
    ok = torch.isfinite(s)
    pooled = (torch.where(ok, s, torch.zeros_like(s)) * w).sum(-1) / (w * ok).sum(-1)
    pooled = torch.where((w * ok).sum(-1) > 0, pooled, torch.full_like(pooled, float("nan")))
    return sum(points) / len(points), pooled


def gate(gap: dict, reliability: dict) -> tuple[bool, str | None]:
    """Whether a condition has a measurable circuit: its gap interval above 0 and its
    reliability interval above 0.2; else the reason."""
    if gap["ci95"] is None or gap["ci95"][0] <= GAP_GATE:
        return False, (f"clean-corrupt gap interval {_fmt(gap['ci95'])} does not lie above "
                       f"{GAP_GATE:g}: no behaviour to explain")
    if reliability["ci95"] is None or reliability["ci95"][0] <= RELIABILITY_GATE:
        return False, (f"map reliability interval {_fmt(reliability['ci95'])} does not lie above "
                       f"{RELIABILITY_GATE:g}: the map is mostly noise at this number of pairs")
    return True, None


def _fmt(ci) -> str:
    return "undefined" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def compare(maps: dict[str, Maps], boot: Bootstrap, blocked: dict[str, str] | None = None
            ) -> dict:
    """Gaps, reliabilities, gates, noise floors, shifts, effects (primary, secondary, direct)
    and d(base-icl, ft-zs), all with intervals from the same resamples. ``blocked``: conditions
    that fail their gate for a reason of their own (a sham whose prompt length is not
    matched)."""
    summary, gates = {}, {}
    for name, m in maps.items():
        gap, rel = m.gap(boot), m.reliability()
        passed, reason = gate(gap, rel)
        if passed and blocked and name in blocked:
            passed, reason = False, blocked[name]
        gates[name] = (passed, reason)
        summary[name] = {"gap": gap, "reliability": rel,
                         "gate": {"passed": passed, "reason": reason},
                         "noise_floor": m.noise_floor()}
    samples: dict[tuple, torch.Tensor] = {}

    def dist(a: str, b: str) -> dict:
        """d(a, b) with interval, or None with the reason a gate gives."""
        for c in (a, b):
            if not gates[c][0]:
                return {"estimate": None, "ci95": None, "reason": f"{c}: {gates[c][1]}"}
        point, s = distance(maps[a], maps[b])
        samples[(a, b)] = s
        return interval(s, point, reason=None)

    shift = {name: dist(name, "base-zs") for name in maps if name != "base-zs"}
    if not gates["base-zs"][0]:
        for v in shift.values():
            v["reason"] = (f"base-zs: {gates['base-zs'][1]}; shifts from base-zs are undefined, "
                           "see effects_direct")

    def effect(real: str, sham: str | None) -> dict:
        if sham is None:
            return {"estimate": None, "ci95": None, "sham": None, "reason": "no sham"}
        a, b = shift[real], shift[sham]
        if a["estimate"] is None or b["estimate"] is None:
            why = a.get("reason") if a["estimate"] is None else b.get("reason")
            return {"estimate": None, "ci95": None, "sham": sham, "reason": why}
        s = samples[(real, "base-zs")] - samples[(sham, "base-zs")]
        return interval(s, a["estimate"] - b["estimate"], sham=sham, reason=None)

    def contrast(icl: dict, ft: dict, icl_real="base-icl", ft_real="ft-zs") -> dict:
        if icl["estimate"] is None or ft["estimate"] is None:
            why = icl.get("reason") if icl["estimate"] is None else ft.get("reason")
            return {"estimate": None, "ci95": None, "sham": None, "reason": why}
        s = ((samples[(icl_real, "base-zs")] - samples[(icl["sham"], "base-zs")]) -
             (samples[(ft_real, "base-zs")] - samples[(ft["sham"], "base-zs")]))
        return interval(s, icl["estimate"] - ft["estimate"],
                        sham=f"{icl['sham']} / {ft['sham']}", reason=None)

    icl_p, _, _ = SHAMS["base-icl"]
    ft_p, ft_s, ft_fallback = SHAMS["ft-zs"]
    primary = {"icl": effect("base-icl", icl_p), "ft": effect("ft-zs", ft_p)}
    primary["icl_minus_ft"] = contrast(primary["icl"], primary["ft"])
    secondary_ft = ft_s if gates.get(ft_s, (False,))[0] else ft_fallback
    secondary = {"icl": effect("base-icl", SHAMS["base-icl"][1]),
                 "ft": effect("ft-zs", secondary_ft)}
    secondary["icl_minus_ft"] = contrast(secondary["icl"], secondary["ft"])
    direct = {"icl": {**dist("base-icl", icl_p), "sham": icl_p},
              "ft": {**dist("ft-zs", ft_p), "sham": ft_p},
              "icl_secondary": {**dist("base-icl", SHAMS["base-icl"][1]),
                                "sham": SHAMS["base-icl"][1]},
              "ft_secondary": {**dist("ft-zs", secondary_ft), "sham": secondary_ft},
              "icl_vs_ft": {**dist("base-icl", "ft-zs"), "sham": None}}
    return {"summary": summary, "shift": shift, "effects": primary,
            "effects_secondary": secondary, "effects_direct": direct}
