"""From per-pair component scores to shifts, effects against shams, and their intervals.

:func:`compare_scores` is the whole comparison, from stored scores alone (``interp compare``
re-runs it on a run directory without a model):

- A condition's **map** is the mean over all 2n pairs of its per-pair component scores (heads
  then MLPs, logit units). Every condition is scored on the same pairs, so the maps' errors are
  correlated; :mod:`interp.shift.estimator` subtracts that shared error covariance.
- **Reliability**: the share of the map's variance across components that the true map
  explains (a variance component, computed the same way in every resample).
- **Gates**: a condition whose clean-corrupt gap interval does not lie above 0, or whose
  reliability is below 0.7 (attenuation factor at most 1.43), has no circuit to compare;
  distances to it are undefined (``None`` with a ``reason``).
- The **shift** of a condition is 1 - the disattenuated Pearson correlation of its map with
  base-zs's, averaged over replicate seeds.
- **Effects**: effect(icl) = shift(base-icl) - shift(base-icl-other-task), effect(ft) =
  shift(ft-zs) - shift(ft-other-task), and their difference (primary); the same with the
  shuffled shams (secondary; ft-random-delta where ft-shuffled fails its gate); and the direct
  distances of each real condition to its shams.
- **Sensitivity** (outside the verdict): the shifts and the primary contrast on heads only and
  on MLPs only, with the same correction and intervals.
- **Intervals**: pairs are resampled once per resample and the same resample serves every
  condition. With one seed per condition, a basic bootstrap interval over pairs (conditional on
  that seed). With several demonstration or fine-tuning seeds, seeds are a random factor:
  t interval over the pair-resampling variance plus the between-seed variance of the per-seed
  estimates (Satterthwaite degrees of freedom). A statistic undefined in more than 2.5 % of
  resamples is reported undefined.
- **Noise floor**: the same estimator between the maps of the two disjoint halves of a
  condition's pairs: the null band of a shift at n pairs.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import t as student_t

from interp.errors import ConfigError, DegenerateDataError
from interp.shift.config import (
    CONDITIONS,
    EQUIVALENCE_MARGIN,
    FT_CONDITIONS,
    GAP_GATE,
    ICL_CONDITIONS,
    RELIABILITY_GATE,
    SHAMS,
)
from interp.shift.estimator import (
    Stat,
    centred,
    correlation,
    moments,
    population,
    reliability,
    sample_moments,
    uniform_weights,
)
from interp.shift.verdict import RULES, decide, sentence
from interp.stats import pearson, resample_weights

BOOTSTRAP_METHOD = ("pairs resampled with replacement, one resample shared by every condition; "
                    "{n_boot} resamples; shared-pair error covariance subtracted; basic "
                    "bootstrap intervals{seeds}")
UNDEFINED_SHARE = 0.025


def family(condition: str) -> str:
    """The random factor a condition's replicates sample: demonstration or fine-tuning seeds."""
    if condition in ICL_CONDITIONS:
        return "icl"
    if condition in FT_CONDITIONS:
        return "ft"
    return "base"


def interval(stat: Stat, **extra) -> dict:
    """``{"estimate", "ci95", "se", "reason", ...}`` of a statistic (see the module doc)."""
    point = sum(float(p.mean()) for p in stat.point.values())
    boot = sum(b.mean(-1) for b in stat.boot.values())
    truth = sum(float(t.mean()) for t in stat.truth.values())
    undefined = float((~torch.isfinite(boot)).double().mean())
    if not math.isfinite(point):
        return {"estimate": None, "ci95": None, "se": None, **extra,
                "reason": extra.get("reason") or "undefined on the sample"}
    if undefined > UNDEFINED_SHARE:
        return {"estimate": None, "ci95": None, "se": None, **extra,
                "reason": f"undefined in {undefined:.1%} of resamples (more than "
                          f"{UNDEFINED_SHARE:.1%})"}
    dev = boot[torch.isfinite(boot)] - truth
    replicated = [p for p in stat.point.values() if p.numel() > 1]
    if not replicated:
        q = torch.quantile(dev, torch.tensor([0.025, 0.975], dtype=dev.dtype))
        lo, hi = point - float(q[1]), point - float(q[0])
        se = float(dev.std())
    else:
        parts = [float(p.var() / p.numel()) for p in replicated]
        dfs = [p.numel() - 1 for p in replicated]
        var = float(dev.var()) + sum(parts)
        # Satterthwaite: the pair-resampling part has (practically) infinite degrees of freedom
        spread = sum(v * v / d for v, d in zip(parts, dfs))
        df = var * var / spread if spread > 0 else math.inf
        se = math.sqrt(var)
        half = (float(student_t.ppf(0.975, max(df, 1.0))) if math.isfinite(df) else 1.96) * se
        lo, hi = point - half, point + half
    out = {"estimate": point, "ci95": [lo, hi], "se": se, "reason": None, **extra}
    if undefined:
        out["undefined_share"] = undefined
    return out


class Comparison:
    """Every statistic of one set of stored scores, sharing one pair resample."""

    def __init__(self, scores: dict, gaps: dict, n_pairs: int, n_boot: int, seed: int,
                 components: slice | None = None):
        self.names = [c for c in CONDITIONS if c in scores]
        self.index: dict[str, list[int]] = {}
        series = []
        for name in self.names:
            self.index[name] = list(range(len(series), len(series) + len(scores[name])))
            series += [x[components] if components is not None else x for x in scores[name]]
        y = centred(torch.stack([torch.as_tensor(x) for x in series]))
        self.n, self.N = n_pairs, y.shape[-1]
        self.w = resample_weights(self.N, n_boot, seed)
        full = sample_moments(y)
        self.C, self.V = full.true_cov()[0], full.observed_cov()[0]
        boot = moments(y, self.w)
        self.Cb, self.Vb = boot.true_cov(), boot.observed_cov()
        self.Ct, self.Vt = population(y)
        self.y, self.gaps, self.n_boot, self.seed = y, gaps, n_boot, seed

    def _per_seed(self, name: str, fn) -> Stat:
        point, boot, truth = [], [], []
        for i in self.index[name]:
            point.append(fn(self.C, self.V, i))
            boot.append(fn(self.Cb, self.Vb, i))
            truth.append(fn(self.Ct, self.Vt, i))
        return Stat.of(family(name), torch.stack(point), torch.stack(boot, -1),
                       torch.stack(truth))

    def reliability(self, name: str) -> Stat:
        return self._per_seed(name, reliability)

    def distance(self, a: str, b: str) -> Stat:
        """1 - disattenuated correlation; replicate r of ``a`` with replicate r of ``b`` (or
        with ``b``'s only one)."""
        idx_b = self.index[b]

        def fn(C, V, i):
            r = self.index[a].index(i)
            return 1.0 - correlation(C, i, idx_b[min(r, len(idx_b) - 1)])
        return self._per_seed(a, fn)

    def spearman_distance(self, a: str, b: str) -> Stat:
        """Cross-fitted disattenuated Spearman distance: 1 - mean(rho(a_A, b_B), rho(a_B, b_A))
        / sqrt(rho(a_A, a_B) rho(b_A, b_B)) (rho: Spearman), maps of the disjoint pair halves A
        and B, so no pair's error enters both sides of a correlation. Pairs i of A and of B are
        resampled together (``w``: n weights)."""
        n, idx_b = self.n, self.index[b]
        w = torch.cat([uniform_weights(n), resample_weights(n, self.n_boot, self.seed + 2)])

        def ranked(i: int, half: int) -> torch.Tensor:      # [B + 1, K] ranks of the maps
            maps = self.y[i, :, half * n:(half + 1) * n] @ w.T
            return maps.T.argsort(-1).argsort(-1).double()

        points, boots = [], []
        for r, i in enumerate(self.index[a]):
            j = idx_b[min(r, len(idx_b) - 1)]
            aA, aB, bA, bB = ranked(i, 0), ranked(i, 1), ranked(j, 0), ranked(j, 1)
            rel = (pearson(aA, aB) * pearson(bA, bB))
            d = 1 - (pearson(aA, bB) + pearson(aB, bA)) / 2 / rel.clamp_min(1e-300).sqrt()
            d = torch.where(rel > 0, d, torch.full_like(d, torch.nan))
            points.append(d[0])
            boots.append(d[1:])
        point = torch.stack(points)
        return Stat.of(family(a), point, torch.stack(boots, -1), point)

    def gap(self, name: str) -> dict:
        g = torch.stack([torch.as_tensor(v).double() for v in self.gaps[name]])   # [R, N]
        stat = Stat.of(family(name), g.mean(-1), (g @ self.w.T).T, g.mean(-1))
        out = interval(stat)
        width = None if out["ci95"] is None else out["ci95"][1] - out["ci95"][0]
        if self.N > 1 and width is not None and width <= 1e-9 * (1 + abs(out["estimate"])):
            raise DegenerateDataError(
                f"condition {name}: every pair gives the same clean-corrupt gap "
                f"({out['estimate']:.4g}, an interval of width 0): the model ignored its input; "
                f"check the installed versions (make install)")
        return out

    def noise_floor(self, name: str) -> dict:
        """The estimator between the maps of pair sets A and B of the same condition."""
        if self.N < 2 * self.n or self.n < 3:
            return {"estimate": None, "ci95": None, "reason": "fewer than 2n pairs"}
        stats = []
        w = resample_weights(self.n, self.n_boot, self.seed + 1)
        for i in self.index[name]:
            halves = torch.stack([self.y[i, :, :self.n], self.y[i, :, self.n:2 * self.n]])
            C, Cb = sample_moments(halves).true_cov()[0], moments(halves, w).true_cov()
            Ct, _ = population(halves)
            stats.append((1 - correlation(C, 0, 1), 1 - correlation(Cb, 0, 1),
                          1 - correlation(Ct, 0, 1)))
        stat = Stat.of(family(name), torch.stack([s[0] for s in stats]),
                       torch.stack([s[1] for s in stats], -1), torch.stack([s[2] for s in stats]))
        return interval(stat, n_pairs=self.n)


def gate(gap: dict, rel: dict, reliability_gate: float = RELIABILITY_GATE
         ) -> tuple[bool, str | None]:
    """Whether a condition has a measurable circuit: its gap interval above 0.1 logits (a gap
    barely above 0 is no behaviour to explain) and its map's reliability (point estimate) at
    least 0.7; else the reason."""
    if gap["ci95"] is None or gap["ci95"][0] <= GAP_GATE:
        return False, (f"clean-corrupt gap interval {_fmt(gap['ci95'])} does not lie above "
                       f"{GAP_GATE:g}: no behaviour to explain")
    if rel["estimate"] is None or rel["estimate"] < reliability_gate:
        shown = "undefined" if rel["estimate"] is None else f"{rel['estimate']:.3f}"
        return False, (f"map reliability {shown} is below {reliability_gate:g}: the map is "
                       f"mostly noise at this number of pairs")
    return True, None


def _fmt(ci) -> str:
    return "undefined" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _undefined(reason: str, **extra) -> dict:
    return {"estimate": None, "ci95": None, "se": None, **extra, "reason": reason}


def _check_inputs(scores: dict, gaps: dict, n_pairs: int) -> None:
    if "base-zs" not in scores:
        raise ConfigError("compare_scores needs the base-zs condition")
    unknown = sorted(set(scores) - set(CONDITIONS))
    if unknown:
        raise ConfigError(f"unknown condition {unknown[0]!r}; known: {', '.join(CONDITIONS)}")
    shapes = {tuple(torch.as_tensor(x).shape) for v in scores.values() for x in v}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigError(f"every score tensor must be [n_components, 2 * n_pairs] of one "
                          f"shape, got {sorted(shapes)}")
    n_pairs_total = next(iter(shapes))[1]
    if n_pairs < 3 or n_pairs_total < n_pairs:
        raise ConfigError(f"n_pairs must be >= 3 and at most the scored pairs "
                          f"({n_pairs_total}), got {n_pairs}")
    for name, v in scores.items():
        if len(gaps.get(name, ())) != len(v):
            raise ConfigError(f"condition {name}: {len(v)} score replicates but "
                              f"{len(gaps.get(name, ()))} gap replicates")


def _effects(comp: Comparison, shift: dict, stats: dict, gates: dict) -> tuple[dict, dict]:
    """Primary and secondary effects (real condition's shift minus its sham's) and the
    icl - ft contrasts, with intervals."""
    def effect(real: str, sham: str | None) -> tuple[dict, Stat | None]:
        if real not in shift:
            return _undefined(f"{real} was not scored", sham=sham), None
        if sham is None or sham not in shift:
            return _undefined("no sham", sham=sham), None
        for c in (real, sham):
            if shift[c]["estimate"] is None:
                return _undefined(shift[c]["reason"], sham=sham), None
        s = stats[real] - stats[sham]
        return interval(s, sham=sham), s

    def contrast(icl, ft) -> dict:
        if icl[1] is None or ft[1] is None:
            return _undefined((icl[0] if icl[1] is None else ft[0])["reason"], sham=None)
        return interval(icl[1] - ft[1], sham=f"{icl[0]['sham']} / {ft[0]['sham']}")

    icl_p, icl_s, _ = SHAMS["base-icl"]
    ft_p, ft_s, ft_fallback = SHAMS["ft-zs"]
    secondary_ft = ft_s if gates.get(ft_s, (False,))[0] else ft_fallback
    out = []
    for icl_sham, ft_sham in ((icl_p, ft_p), (icl_s, secondary_ft)):
        icl, ft = effect("base-icl", icl_sham), effect("ft-zs", ft_sham)
        out.append({"icl": icl[0], "ft": ft[0], "icl_minus_ft": contrast(icl, ft)})
    return out[0], out[1]


def _shifts(comp: Comparison, gates: dict, spearman: bool = False) -> tuple[dict, dict]:
    shift, stats = {}, {}
    measure = comp.spearman_distance if spearman else comp.distance
    for name in comp.names:
        if name == "base-zs":
            continue
        blocked = [c for c in (name, "base-zs") if not gates[c][0]]
        if blocked:
            c = blocked[0]
            why = f"{c}: {gates[c][1]}"
            if c == "base-zs":
                why += "; shifts from base-zs are undefined, see effects_direct"
            shift[name] = _undefined(why)
            continue
        stats[name] = measure(name, "base-zs")
        shift[name] = interval(stats[name])
    return shift, stats


def _direct(comp: Comparison, gates: dict, secondary_ft: str | None) -> dict:
    def dist(a: str, b: str | None) -> dict:
        if a not in comp.index:
            return _undefined(f"{a} was not scored", sham=b)
        if b is None or b not in comp.index:
            return _undefined("no sham", sham=b)
        for c in (a, b):
            if not gates[c][0]:
                return _undefined(f"{c}: {gates[c][1]}", sham=b)
        return interval(comp.distance(a, b), sham=b)

    icl_p, icl_s, _ = SHAMS["base-icl"]
    return {"icl": dist("base-icl", icl_p), "ft": dist("ft-zs", SHAMS["ft-zs"][0]),
            "icl_secondary": dist("base-icl", icl_s), "ft_secondary": dist("ft-zs", secondary_ft),
            "icl_vs_ft": {**dist("base-icl", "ft-zs"), "sham": None}}


def _summaries(comp: Comparison, blocked: dict, reliability_gate: float) -> tuple[dict, dict]:
    summary, gates = {}, {}
    for name in comp.names:
        gap, rel = comp.gap(name), interval(comp.reliability(name))
        rel_ci = rel["ci95"]
        rel["excludes_estimate"] = (rel_ci is not None
                                    and not rel_ci[0] <= rel["estimate"] <= rel_ci[1])
        passed, reason = gate(gap, rel, reliability_gate)
        if passed and name in blocked:
            passed, reason = False, blocked[name]
        gates[name] = (passed, reason)
        summary[name] = {"gap": gap, "reliability": rel,
                         "gate": {"passed": passed, "reason": reason},
                         "noise_floor": comp.noise_floor(name)}
    return summary, gates


def _sensitivity(scores: dict, gaps: dict, gates: dict, n_pairs: int, n_boot: int, seed: int,
                 n_heads: int | None) -> dict:
    """Shifts and the primary contrast by the cross-fitted disattenuated Spearman distance, and
    on heads only and MLPs only (outside the verdict)."""
    parts = [("spearman", None, True)]
    if n_heads:
        parts += [("heads_only", slice(0, n_heads), False),
                  ("mlp_only", slice(n_heads, None), False)]
    out = {}
    for label, part, spearman in parts:
        comp = Comparison(scores, gaps, n_pairs, n_boot, seed, components=part)
        if comp.y.shape[1] < 3 or (spearman and comp.N < 2 * comp.n):
            continue
        shift, stats = _shifts(comp, gates, spearman)
        primary, _ = _effects(comp, shift, stats, gates)
        out[label] = {"shift": shift, "icl_minus_ft": primary["icl_minus_ft"]}
    return out


def compare_scores(scores: dict, gaps: dict, *, n_pairs: int, n_boot: int = 500, seed: int = 0,
                   margin: float = EQUIVALENCE_MARGIN, blocked: dict | None = None,
                   reliability_gate: float = RELIABILITY_GATE, n_heads: int | None = None,
                   sensitivity: bool = True) -> dict:
    """The comparison of stored scores, as plain JSON-shaped dicts.

    ``scores[condition]``: one tensor per replicate seed, ``[n_components, 2 * n_pairs]`` (set A
    then set B); ``gaps[condition]``: the matching ``[2 * n_pairs]`` clean-corrupt gaps.
    ``blocked``: conditions that fail their gate for a reason of their own; ``n_heads``: the
    first ``n_heads`` components are heads (enables the heads-only / MLP-only sensitivity);
    ``sensitivity=False`` skips the sensitivity distances.
    Returns ``summary`` (gap, reliability, gate, noise floor per condition), ``shift``,
    ``effects``, ``effects_secondary``, ``effects_direct``, ``sensitivity``, ``verdict_code``,
    ``verdict_rule`` and ``verdict``."""
    _check_inputs(scores, gaps, n_pairs)
    comp = Comparison(scores, gaps, n_pairs, n_boot, seed)
    summary, gates = _summaries(comp, blocked or {}, reliability_gate)
    shift, stats = _shifts(comp, gates)
    primary, secondary = _effects(comp, shift, stats, gates)
    ft_s, ft_fallback = SHAMS["ft-zs"][1:]
    secondary_ft = ft_s if gates.get(ft_s, (False,))[0] else ft_fallback
    code, rule = decide(primary["icl_minus_ft"], secondary["icl_minus_ft"], margin)
    replicated = max(len(v) for v in scores.values()) > 1
    return {
        "summary": summary, "shift": shift, "effects": primary,
        "effects_secondary": secondary, "effects_direct": _direct(comp, gates, secondary_ft),
        "sensitivity": (_sensitivity(scores, gaps, gates, n_pairs, n_boot, seed, n_heads)
                        if sensitivity else {}),
        "verdict_code": code, "verdict_rule": rule,
        "verdict": sentence(code, rule, primary["icl_minus_ft"], secondary["icl_minus_ft"],
                            margin),
        "verdict_rules": {k: {"code": v[0], "when": v[1]} for k, v in RULES.items()},
        "equivalence_margin": margin,
        "gates": {"gap_above": GAP_GATE, "reliability_at_least": reliability_gate},
        "bootstrap": BOOTSTRAP_METHOD.format(
            n_boot=n_boot, seeds="; seeds a random factor: t interval over pair-resampling plus "
                                 "between-seed variance" if replicated else
                                 " (conditional on the one seed of each condition)"),
    }


def condition_summary(x: torch.Tensor, gap: torch.Tensor, n_boot: int, seed: int,
                      reliability_gate: float = RELIABILITY_GATE) -> dict:
    """Gap, reliability and gate of one condition's per-pair scores ``[K, N]`` alone."""
    comp = Comparison({"base-zs": [x]}, {"base-zs": [gap]}, max(3, x.shape[-1] // 2), n_boot,
                      seed)
    gap_i, rel = comp.gap("base-zs"), interval(comp.reliability("base-zs"))
    passed, reason = gate(gap_i, rel, reliability_gate)
    return {"gap": gap_i, "reliability": rel, "passes": passed, "reason": reason}


def map_distance(x: torch.Tensor, z: torch.Tensor) -> tuple[float, float]:
    """(1 - disattenuated correlation, reliability of ``x``) of two conditions' per-pair
    scores ``[K, N]`` on the same N pairs (point estimates)."""
    y = centred(torch.stack([torch.as_tensor(x), torch.as_tensor(z)]))
    m = sample_moments(y)
    C, V = m.true_cov()[0], m.observed_cov()[0]
    return float(1 - correlation(C, 0, 1)), float(reliability(C, V, 0))
