"""The claims study: verdicts that follow intervals and margins, causal-test statistics on cases
with known answers, and a quick study on the tiny model whose report renders."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from interp.claims import BY_NAME, CLAIMS, dose_trend_claim, verdict
from interp.cli import main
from interp.shift.causal import matched_random_sets, share_test
from interp.shift.trend import planted_trends, seed_trend
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


def _trend_rows(values_by_seed):
    return [{"seed": s, "shots": d, "corrected_shift": v}
            for s, values in enumerate(values_by_seed) for d, v in zip((1, 2, 4, 8), values)]


def test_seed_trend_by_hand():
    # per seed Kendall tau over (dose, value): 1, 1, 2/3, 1, 0 -> their mean, t interval
    rows = _trend_rows([(1, 2, 3, 4), (0, 1, 5, 6), (2, 1, 3, 4), (1, 2, 3, 9), (4, 3, 1, 5)])
    t = seed_trend(rows, "shots", "corrected_shift")
    taus = torch.tensor([1, 1, 2 / 3, 1, 0], dtype=torch.float64)
    assert t["per_seed"] == pytest.approx(dict(enumerate(taus.tolist())))
    assert t["estimate"] == pytest.approx(float(taus.mean()))
    half = 2.7764451 * float(taus.std()) / math.sqrt(5)
    assert t["ci95"] == pytest.approx([float(taus.mean()) - half, 1.0])   # clipped to tau's range
    assert float(taus.mean()) + half > 1
    # undefined points drop out; a seed with fewer than 3 points drops out; < 5 seeds: undefined
    rows[0]["corrected_shift"] = rows[1]["corrected_shift"] = None
    few = seed_trend(rows, "shots", "corrected_shift")
    assert few["estimate"] is None and few["n_seeds"] == 4 and "too few seeds" in few["reason"]


def test_trend_rule_on_planted_truths():
    rows = planted_trends(sims=300, seed=1)
    t = {(r["doses"], r["seeds"], r["slope"]): r["lower_above_0"] for r in rows
         if r["rule"] == "t"}
    assert all(v <= 0.06 for (_, _, slope), v in t.items() if slope == 0)   # false positives
    assert t[(4, 5, 1.0)] >= 0.85 and t[(4, 8, 1.0)] >= 0.95                  # power


def test_dose_trend_claim_rule():
    def trend(est, lo, hi, reason=None):
        return {"estimate": est, "ci95": [lo, hi], "se": 0.1, "reason": reason}
    rising = {"icl": {"gain": trend(0.6, 0.2, 1.0), "shift": trend(0.5, 0.3, 0.7)},
              "ft": {"gain": trend(0.4, 0.1, 0.7), "shift": trend(0.2, -0.1, 0.5)}}
    est = dose_trend_claim({"trends": rising})
    assert est["estimate"] == 0.2 and est["ci95"] == [-0.1, 0.5]      # both must rise
    assert verdict(BY_NAME["shift_tracks_gain"], est["estimate"], est["ci95"]) == "inconclusive"
    flat_ft = {**rising, "ft": {**rising["ft"], "gain": trend(0.0, -0.3, 0.3)}}
    est = dose_trend_claim({"trends": flat_ft})        # FT's dose buys nothing: ICL alone
    assert est["methods"] == ["icl"] and verdict(BY_NAME["shift_tracks_gain"], est["estimate"],
                                                 est["ci95"]) == "holds"
    falling = {**flat_ft, "icl": {**rising["icl"], "shift": trend(-0.6, -0.9, -0.3)}}
    est = dose_trend_claim({"trends": falling})
    assert verdict(BY_NAME["shift_tracks_gain"], est["estimate"], est["ci95"]) == "contradicted"
    few = {**rising, "ft": {**rising["ft"], "shift": trend(None, None, None, "too few seeds")}}
    assert "too few seeds" in dose_trend_claim({"trends": few})["reason"]
    nothing = {m: {**v, "gain": trend(0.0, -0.2, 0.2)} for m, v in rising.items()}
    assert "gain not established" in dose_trend_claim({"trends": nothing})["reason"]


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


def test_causal_interventions_act_from_the_first_edit(tiny):
    from interp.analysis.components import COMPONENT_KINDS
    from interp.engine import forward
    from interp.shift.causal import Prompts, first_edit, run_sets, tail_means, tail_values
    from interp.shift.conditions import Condition, build_pairs
    from interp.shift.config import ShiftConfig
    from interp.shift.measure import ConditionRunner

    config = ShiftConfig(model="tiny-random-llama", n_pairs=4, quick=True)
    pairs = build_pairs(config, tiny.tokenizer, 4)
    prompts = Prompts(config, tiny.tokenizer, pairs, [])
    for a, b, e in zip(pairs.clean, pairs.corrupt, prompts.edit):
        assert e == first_edit(a, b) and a[:e] == b[:e] and a[e] != b[e]
    assert prompts.span > 1                      # some pair is edited before its last token
    runner, cond = ConditionRunner(tiny, {}, config.task), Condition("base-zs")
    L, H = tiny.n_layers, tiny.n_heads
    plain = run_sets(runner, cond, prompts, [((), ())], None)[0]
    own = tail_values(runner, cond, prompts, prompts.span)
    everything = ([(l, h) for l in range(L) for h in range(H)], list(range(L)))
    same = run_sets(runner, cond, prompts, [everything], own)[0]
    assert torch.allclose(same, plain, atol=1e-4)      # its own values, aligned: no change
    means = tail_means(own, prompts)
    ablated = run_sets(runner, cond, prompts, [([(0, 1)], [])], means)[0]
    name = COMPONENT_KINDS["heads"].hook_name(0)
    prefix = runner.prefix(cond)
    for i, ids in enumerate(prompts.ids):               # by hand: every position from the edit
        start, T = len(prefix) + prompts.edit[i], len(prefix) + len(ids)

        def hook(z, hook=None, start=start, T=T):
            z = z.clone()
            z[0, start:, 1] = means[name][0, means[name].shape[1] - (T - start):, 1]
            return z
        with torch.no_grad():
            logits = forward(tiny, torch.tensor([prefix + ids]), hooks=[(name, hook)])
        assert float(ablated[i]) == pytest.approx(float(prompts.metric([i])(logits)[0]),
                                                  abs=1e-4)
    assert not torch.allclose(ablated, plain, atol=1e-4)
