"""Planted truths for the comparison: how often its intervals cover, how biased it is, and how
often each verdict fires, before it is trusted on a model.

Each simulation draws true maps for the eight conditions with planted distances to base-zs
(heavy-tailed components: Student t with 3 degrees of freedom, MLPs three times the heads),
per-pair scores around them with heteroscedastic noise (each component's noise grows with its
size), part of each pair's error shared by every condition (the more a condition resembles
base-zs, the more it shares, as when every condition sees the same prompts), a noise level
that gives the scenario's map reliability, and, with several seeds, a planted between-seed
spread of each ICL and FT condition's distance. The comparison (:func:`compare_scores`) runs
on the scores, and the table reports, with Monte Carlo standard errors: coverage of the shift,
effect and contrast intervals, bias of the shift and of the contrast, and the rate of each
verdict (false-positive rate under a planted null, power under a planted difference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from interp.shift.config import CONDITIONS, EQUIVALENCE_MARGIN, FT_CONDITIONS, ICL_CONDITIONS
from interp.shift.contrasts import compare_scores
from interp.shift.verdict import DIRECTIONAL

N_HEADS, N_MLPS = 270, 30        # SmolLM2's 30 layers x 9 heads, and its MLPs
REFERENCE_PAIRS = 32             # the default n = 16: 2n pairs per map
BASE_SHIFT = 0.30                # planted shift of base-icl and ft-zs under the null
SHAM_SHIFT = {"base-icl-other-task": 0.10, "base-icl-shuffled": 0.12, "ft-other-task": 0.10,
              "ft-shuffled": 0.12, "ft-random-delta": 0.02}


@dataclass(frozen=True)
class Scenario:
    name: str
    contrast: float = 0.0        # planted (icl effect) - (ft effect), primary and secondary
    reliability: float = 0.9     # of each condition's map at the default 2 x 16 pairs
    n_pairs: int = 16            # n: each condition scores 2n pairs (same per-pair noise)
    shared: float = 0.6          # share of base-zs's per-pair error every pair shares
    seeds: int = 1
    seed_spread: float = 0.0     # between-seed SD of each ICL / FT condition's distance

    def truths(self) -> dict[str, float]:
        """Planted shift of every condition but base-zs."""
        out = {**SHAM_SHIFT, "base-icl": BASE_SHIFT + self.contrast / 2,
               "ft-zs": BASE_SHIFT - self.contrast / 2}
        return {c: out[c] for c in CONDITIONS if c != "base-zs"}


M = EQUIVALENCE_MARGIN
SCENARIOS = (
    Scenario("null, shared errors, r=0.99", reliability=0.99),
    Scenario("null, shared errors, r=0.95", reliability=0.95),
    Scenario("null, shared errors, r=0.80", reliability=0.80),
    Scenario("null, shared errors, r=0.70", reliability=0.70),
    Scenario("null, independent errors, r=0.90", shared=0.0),
    Scenario("null, shared errors, r=0.80, n=64", reliability=0.80, n_pairs=64),
    Scenario("null, 5 seeds, seed spread 0.03", seeds=5, seed_spread=0.03),
    Scenario("ICL more by 2x margin", contrast=2 * M),
    Scenario("FT more by 2x margin", contrast=-2 * M),
    Scenario("ICL more by 3x margin", contrast=3 * M),
    Scenario("ICL more by 3x margin, n=32", contrast=3 * M, n_pairs=32),
    Scenario("ICL more by 3x margin, n=64", contrast=3 * M, n_pairs=64),
    Scenario("ICL more by 3x margin, 5 seeds, spread 0.03", contrast=3 * M, seeds=5,
             seed_spread=0.03),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean()
    return v / v.norm()


def _heavy(gen: torch.Generator, k: int) -> torch.Tensor:
    """Heavy-tailed component values: Student t (3 df), MLPs three times the heads."""
    normal = torch.randn(k, generator=gen, dtype=torch.float64)
    chi = torch.randn(3, k, generator=gen, dtype=torch.float64).pow(2).sum(0)
    v = normal / (chi / 3).sqrt()
    v[N_HEADS:] *= 3
    return v


def true_map(z: torch.Tensor, distance: float, gen: torch.Generator) -> torch.Tensor:
    """A map whose Pearson correlation with ``z`` is exactly 1 - ``distance``."""
    rho = max(-0.999, min(0.999, 1.0 - distance))
    u = _heavy(gen, len(z))
    u = _unit(u - (u - u.mean()) @ z * z)
    return rho * z + math.sqrt(1 - rho * rho) * u


def simulate_scores(s: Scenario, gen: torch.Generator) -> tuple[dict, dict]:
    """Per-pair scores ``{condition: [R x [K, 2n]]}`` and gaps of one simulation."""
    K, N = N_HEADS + N_MLPS, 2 * s.n_pairs
    z = _unit(_heavy(gen, K))
    sd = 0.5 + z.abs() / z.abs().mean()                      # heteroscedastic noise shape
    # per-pair noise giving the reliability of a map of REFERENCE_PAIRS pairs:
    # var_true / (var_true + noise / pairs)
    var_true = float(z.var())
    level = math.sqrt(var_true * (1 / s.reliability - 1) * REFERENCE_PAIRS
                      / float((sd ** 2).mean()))
    eta = torch.randn(K, N, generator=gen, dtype=torch.float64)      # shared by every condition
    truths = s.truths()
    scores, gaps = {}, {}
    for name in CONDITIONS:
        reps = s.seeds if name in ICL_CONDITIONS + FT_CONDITIONS else 1
        scores[name], gaps[name] = [], []
        for _ in range(reps):
            d = 0.0 if name == "base-zs" else truths[name]
            if reps > 1 and s.seed_spread:
                d += s.seed_spread * float(torch.randn(1, generator=gen, dtype=torch.float64))
            mu = z if name == "base-zs" else true_map(z, d, gen)
            share = s.shared * (1 - d)
            own = torch.randn(K, N, generator=gen, dtype=torch.float64)
            noise = math.sqrt(max(share, 0)) * eta + math.sqrt(max(1 - share, 0)) * own
            scores[name].append(mu[:, None] + level * sd[:, None] * noise)
            gaps[name].append(1.0 + torch.randn(N, generator=gen, dtype=torch.float64))
    return scores, gaps


def _covers(interval: dict, truth: float) -> float | None:
    ci = interval.get("ci95")
    return None if ci is None else float(ci[0] <= truth <= ci[1])


def one_run(s: Scenario, seed: int, n_boot: int) -> dict:
    """Coverage indicators, errors and the verdict of one simulation."""
    gen = torch.Generator().manual_seed(seed)
    scores, gaps = simulate_scores(s, gen)
    out = compare_scores(scores, gaps, n_pairs=s.n_pairs, n_boot=n_boot, seed=seed,
                         sensitivity=False)
    truths = s.truths()
    effect_truth = {"icl": truths["base-icl"] - truths["base-icl-other-task"],
                    "ft": truths["ft-zs"] - truths["ft-other-task"]}
    effect_truth["icl_minus_ft"] = effect_truth["icl"] - effect_truth["ft"]
    shift_cov = [_covers(out["shift"][c], t) for c, t in truths.items()]
    return {
        "shift_cover": [c for c in shift_cov if c is not None],
        "shift_error": [out["shift"][c]["estimate"] - t for c, t in truths.items()
                        if out["shift"][c]["estimate"] is not None],
        "effect_cover": [_covers(out["effects"][k], effect_truth[k]) for k in ("icl", "ft")],
        "contrast_cover": _covers(out["effects"]["icl_minus_ft"], effect_truth["icl_minus_ft"]),
        "contrast_error": (None if out["effects"]["icl_minus_ft"]["estimate"] is None else
                           out["effects"]["icl_minus_ft"]["estimate"]
                           - effect_truth["icl_minus_ft"]),
        "reliability_excludes": [float(v["reliability"].get("excludes_estimate") or 0)
                                 for v in out["summary"].values()],
        "verdict": out["verdict_code"],
        "defined": float(out["effects"]["icl_minus_ft"]["estimate"] is not None),
    }


def _rate(values: list) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    p = sum(v) / len(v)
    return p, math.sqrt(max(p * (1 - p), 1e-12) / len(v))


def _mean(values: list) -> tuple[float | None, float | None]:
    v = torch.tensor([x for x in values if x is not None], dtype=torch.float64)
    if not len(v):
        return None, None
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else None


def scenario_row(s: Scenario, runs: list[dict]) -> dict:
    """One table row: rates and means with Monte Carlo standard errors."""
    flat = lambda key: [x for r in runs for x in r[key]]   # noqa: E731
    verdicts = [r["verdict"] for r in runs]
    row = {"scenario": s.name, **asdict(s), "n_sims": len(runs)}
    for key, (est, se) in {
        "shift_coverage": _rate(flat("shift_cover")),
        "effect_coverage": _rate([x for r in runs for x in r["effect_cover"]]),
        "contrast_coverage": _rate([r["contrast_cover"] for r in runs]),
        "contrast_defined": _rate([r["defined"] for r in runs]),
        "shift_bias": _mean(flat("shift_error")),
        "contrast_bias": _mean([r["contrast_error"] for r in runs]),
        "reliability_ci_excludes_point": _rate(flat("reliability_excludes")),
        "icl_more": _rate([float(v == "icl_more") for v in verdicts]),
        "ft_more": _rate([float(v == "ft_more") for v in verdicts]),
        "directional": _rate([float(v in DIRECTIONAL) for v in verdicts]),
        "below_margin": _rate([float(v.endswith("below_margin")) for v in verdicts]),
        "no_difference": _rate([float(v == "no_difference") for v in verdicts]),
    }.items():
        row[key], row[key + "_mcse"] = est, se
    return row


def calibrate(scenarios=SCENARIOS, n_sims: int = 200, n_boot: int = 300, seed: int = 0,
              progress: bool = True) -> list[dict]:
    """One summary row per scenario (see the module doc)."""
    rows = []
    bar = tqdm(total=len(scenarios) * n_sims, desc="calibrate", disable=not progress)
    for i, s in enumerate(scenarios):
        runs = []
        for j in range(n_sims):
            runs.append(one_run(s, seed + 100_003 * i + j, n_boot))
            bar.update(1)
        rows.append(scenario_row(s, runs))
    bar.close()
    return rows
