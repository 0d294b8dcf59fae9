"""The claims study: verdicts that follow intervals and margins, causal-test statistics on cases
with known answers, and a quick study on the tiny model whose report renders."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from interp.claims import BY_NAME, CLAIMS, partial_spearman, verdict
from interp.cli import main
from interp.shift.causal import matched_random_sets, share_test
from interp.study import CLAIM_COLUMNS, claims_summary

ARTIFACTS = Path(os.environ.get("INTERP_ARTIFACTS", "runs/test-artifacts"))


@pytest.mark.parametrize("estimate,ci,moot,expected", [
    (0.3, [0.1, 0.5], False, "holds"),
    (-0.3, [-0.5, -0.1], False, "contradicted"),
    (0.04, [0.01, 0.07], False, "positive_below_margin"),    # above 0, not above the margin
    (0.03, [0.01, 0.045], False, "positive_below_margin"),
    (-0.03, [-0.045, -0.01], False, "negative_below_margin"),
    (0.01, [-0.02, 0.03], False, "no_effect"),
    (0.1, [-0.2, 0.4], False, "inconclusive"),
    (None, None, False, "inconclusive"),
    (0.3, [0.1, 0.5], True, "moot"),
])
def test_verdict_follows_interval_and_margin(estimate, ci, moot, expected):
    assert verdict(BY_NAME["icl_beats_ft"], estimate, ci, moot) == expected


def test_every_claim_predicts_a_positive_value():
    assert {c.name for c in CLAIMS} == {"icl_beats_ft", "icl_shifts_more", "shift_necessary",
                                        "shift_sufficient", "shift_tracks_gain",
                                        "advantage_pattern_specific", "icl_relies_on_shortcut"}
    assert all(c.prediction == "positive" and c.margin > 0 for c in CLAIMS)


def test_planted_component_is_necessary_and_a_random_one_is_not():
    """Prompts whose gain is carried by one planted component: ablating it removes the gain
    (share ~1, top percentile), random matched sets remove nothing; a planted shift that
    carries no gain is not sufficient."""
    gen = torch.Generator().manual_seed(0)
    n = 40
    base = torch.randn(n, generator=gen) * 0.1           # base-zs: no behaviour
    reference = base + 2.0                                # base-icl: a gain of 2 logits
    runs = reference[None].repeat(21, 1) + 0.05 * torch.randn(21, n, generator=gen)
    runs[0] = base + 0.05 * torch.randn(n, generator=gen)    # ablating the planted set
    mask = torch.ones(n, dtype=torch.bool)
    necessary = share_test(base, reference, runs, -1, mask, 300, 0)
    assert necessary["estimate"] == pytest.approx(1.0, abs=0.1)
    assert necessary["ci95"][0] > 0.5 and necessary["percentile"] == 1.0
    # the same prompts with a random set as the "chosen" one: no effect
    random_first = runs[[1] + list(range(2, 21)) + [0]]
    assert abs(share_test(base, reference, random_first[:20], -1, mask, 300, 0)["estimate"]) < 0.1
    # a planted shift that carries no gain: patching it into base-zs recovers nothing
    patched = base[None].repeat(21, 1) + 0.05 * torch.randn(21, n, generator=gen)
    sufficient = share_test(base, reference, patched, 1, mask, 300, 0)
    assert abs(sufficient["estimate"]) < 0.1 and sufficient["ci95"][0] < 0.1
    # no gain at all: the test is moot
    assert share_test(base, base.clone(), runs, -1, mask, 300, 0)["moot"]


def test_matched_random_sets_keep_the_deciles():
    importance = torch.arange(100, dtype=torch.float)
    chosen = [99, 98, 50, 5]
    sets = matched_random_sets(importance, chosen, 30, seed=1)
    assert len(sets) == 30 and all(len(set(s)) == 4 for s in sets)
    for s in sets:
        assert sorted(i // 10 for i in s) == sorted(i // 10 for i in chosen)
        assert not set(s) & set(chosen)            # drawn from outside the chosen set
    # a decile that runs dry: the nearest |score| outside the chosen set stands in
    crowded = matched_random_sets(importance, list(range(90, 100)), 5, seed=2)
    assert all(len(set(s)) == 10 and min(s) >= 80 and not set(s) & set(range(90, 100))
               for s in crowded)


def test_partial_spearman_removes_dose_and_method():
    points = []
    for method in ("icl", "ft"):
        for dose in (1, 2, 4, 8, 16):
            shift = 0.1 * math.log(dose) + (0.5 if method == "icl" else 0)
            points.append({"method": method, "dose": dose, "sham_corrected_shift": shift,
                           "accuracy_gain": 0.2 * math.log(dose) + dose % 3 * 0.01})
    rho, ci, n = partial_spearman(points, 200, 0)
    assert n == 10 and abs(rho) < 0.9          # what dose and method explain is gone
    few = partial_spearman(points[:5], 200, 0)
    assert few[1] is None and few[2] == 5


def test_holm_minimal_effect_pvalues_and_pooling():
    rows = [{"claim": "icl_beats_ft", "task": t, "model": "m", "margin": 0.05, "estimate": e,
             "ci_low": e - 0.1, "ci_high": e + 0.1, "se": 0.1 / 1.96, "verdict": v}
            for t, e, v in (("a", 0.5, "holds"), ("b", 0.16, "holds"), ("c", 0.02, "x"))]
    summary = claims_summary(pd.DataFrame(rows, columns=CLAIM_COLUMNS))
    by_task = {r["task"]: r for r in summary["claims"]}
    # the family: two minimal-effect tests per row; p for theta <= margin at a: tiny
    se = 0.1 / 1.96
    p_b = 0.5 * math.erfc((0.16 - 0.05) / se / math.sqrt(2))
    assert by_task["b"]["p_holm"] == pytest.approx(min(1.0, 5 * p_b), rel=1e-6)
    assert by_task["a"]["verdict"] == "holds" and by_task["a"]["p_holm"] < 1e-6
    # b's interval lies above the margin, but not after Holm's correction over 6 tests
    assert by_task["b"]["verdict"] == "inconclusive" and "Holm" in by_task["b"]["reason"]
    pooled = summary["pooled"][0]
    assert pooled["tasks"] == 3 and 0.02 < pooled["estimate"] < 0.5 and pooled["tau2"] > 0
    # Hartung-Knapp: t with k - 1 = 2 degrees of freedom, wider than a normal interval
    assert pooled["ci_high"] - pooled["ci_low"] > 2 * 1.96 * math.sqrt(pooled["tau2"] / 3)
    two = claims_summary(pd.DataFrame(rows[:2], columns=CLAIM_COLUMNS))["pooled"][0]
    assert two["estimate"] is None and "fewer than 3" in two["reason"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["--quiet", "study", "--models", "tiny-random-llama", "--tasks",
                 "boolean,parity", "--quick", "--target-mdd", "5", "--out", str(out)]) == 0
    return out


def test_quick_study_writes_every_claim_per_task(study):
    claims = pd.read_csv(study / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    assert len(claims) == 2 * len(CLAIMS) and set(claims.task) == {"boolean", "parity"}
    assert (claims.claim == "icl_relies_on_shortcut").sum() == 2 and claims.cell_mdd.notna().all()
    for _, row in claims.iterrows():
        claim = BY_NAME[row["claim"]]
        if pd.isna(row["estimate"]):
            assert isinstance(row["reason"], str) and row["reason"]
            assert row["verdict"] in ("inconclusive", "moot")
        elif row["claim"] != "icl_shifts_more":      # that one follows the run's own rule
            by_interval = verdict(claim, row["estimate"], [row["ci_low"], row["ci_high"]])
            assert row["verdict"] == by_interval or (
                row["verdict"] == "inconclusive" and "Holm" in row["reason"])
    assert (study / "study.html").is_file() and (study / "provenance.json").is_file()
    record = json.loads((study / "study.json").read_text())
    for cell in record["cells"]:      # pairs planned from the preflight's variance
        plan = cell["preflight"]["plan"]
        assert plan["n_pairs"] >= 4 and (cell["status"] != "done" or
                                          set(claims[claims.task == cell["task"]].n_pairs)
                                          == {plan["n_pairs"]})
    assert "claims_commit" in record and any(
        d["name"] == "icl_relies_on_shortcut" for d in record["claim_definitions"])


def test_study_report_renders_in_headless_chromium(study):
    from browser import open_page

    with open_page(study / "study.html") as page:
        info = page.wait_for("""
            return {plots: document.querySelectorAll('.js-plotly-plot').length,
                    rows: document.querySelectorAll('#claims tr').length,
                    runs: document.querySelectorAll('#runs li').length};""",
                             lambda s: s["plots"] >= 1)
        page.screenshot(ARTIFACTS / "study_report.png")
        errors = page.severe_errors()
    assert not errors, errors
    assert info["rows"] == 2 * len(CLAIMS) + 1 and info["runs"] == 2


def test_separating_reliance_on_planted_strategies():
    from interp.shift.config import ShiftConfig
    from interp.shift.results import separating_reliance

    gen = torch.Generator().manual_seed(0)
    n = 16

    def kind(gap):
        corrupt = torch.randn(2 * n, generator=gen)
        return {"clean": corrupt + gap + 0.3 * torch.randn(2 * n, generator=gen),
                "corrupt": corrupt}

    config = ShiftConfig(model="tiny-random-llama", n_pairs=n, n_boot=400)
    keys = {"base-zs": ["base-zs/0"], "base-icl": ["base-icl/0", "base-icl/1"]}
    rule = {"counterfactual": kind(2.0), "separating": kind(2.0)}
    shortcut = [{"counterfactual": kind(2.0), "separating": kind(0.0)} for _ in range(2)]
    planted = separating_reliance(config, {"base-zs/0": rule, "base-icl/0": shortcut[0],
                                           "base-icl/1": shortcut[1]}, keys)
    assert planted["estimate"] == pytest.approx(1.0, abs=0.15) and planted["ci95"][0] > 0.5
    same = separating_reliance(config, {"base-zs/0": rule, "base-icl/0": rule,
                                        "base-icl/1": rule}, keys)
    assert same["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert same["ci95"][0] <= 0 <= same["ci95"][1]
    flat = {"counterfactual": kind(0.0), "separating": kind(0.0)}
    undefined = separating_reliance(config, {"base-zs/0": flat, "base-icl/0": rule,
                                             "base-icl/1": rule}, keys)
    assert undefined["estimate"] is None and "base-zs" in undefined["reason"]


def test_accuracy_claims_need_a_condition_off_the_floor_and_ceiling():
    from interp.claims import floor_ceiling, gated

    def results(icl, ft):
        return {"conditions": {"base-icl": {"accuracy": {"pattern": {"ci95": icl}}},
                               "ft-zs": {"accuracy": {"pattern": {"ci95": ft}}}}}

    assert floor_ceiling(results([0.3, 0.6], [0.9, 1.0]), "boolean", "pattern") is not None
    assert floor_ceiling(results([0.3, 0.6], [0.8, 0.97]), "boolean", "pattern") is None
    contrast = {"estimate": -0.2, "ci95": [-0.3, -0.1]}
    held = gated(contrast, results([0.4, 0.6], [1.0, 1.0]), "boolean", ("pattern",))
    assert held["estimate"] is None and "ceiling" in held["reason"]
    assert held["ungated"]["estimate"] == -0.2


def test_pairs_planned_for_a_target_mdd(tiny):
    from interp.shift.config import ShiftConfig
    from interp.shift.gaps import plan_pairs
    from interp.shift.verdict import MDD_FACTOR

    config = ShiftConfig(model="tiny-random-llama", n_pairs=16)
    se = 0.05            # the primary contrast's standard error is taken as twice this
    target = MDD_FACTOR * 2 * se / 4           # a quarter of the preflight's MDD: 16x the pairs
    plan = plan_pairs(tiny, config, se, target, 12, 40)
    assert plan["n_pairs"] == 256 and plan["mdd_planned"] == pytest.approx(target)
    assert plan["estimated_hours"] > plan_pairs(tiny, config, se, 4 * target, 12, 40)[
        "estimated_hours"] > 0
    huge = plan_pairs(tiny, config, se, target / 100, 12, 40)
    assert huge["capped"] and huge["n_pairs"] == 4096
