"""The controlled circuit-shift experiment: statistics on synthetic maps with known answers, the
verdict rules, and a quick run on the tiny model that must write every key consistently."""

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from interp.circuits import ScoreMap, disattenuated, distances, jaccard, overlap_pvalue, rbo, top_k
from interp.errors import StaleResultsError
from interp.shift import CONDITIONS, SHAMS, ShiftConfig, run_shift
from interp.shift.contrasts import compare_scores, gate
from interp.shift.verdict import RULES, decide

ARTIFACTS = Path(os.environ.get("INTERP_ARTIFACTS", "runs/test-artifacts"))


def _scores(signal: torch.Tensor, n: int, noise: float, gen) -> torch.Tensor:
    """Per-pair scores ``[components, n]``: a fixed map plus independent noise per pair."""
    return signal[:, None] + noise * torch.randn(len(signal), n, generator=gen)


def test_circuit_distance_hand_values():
    a = ScoreMap(torch.tensor([[3.0, 0.0], [0.0, -2.0]]), torch.tensor([1.0, 0.0]))
    b = ScoreMap(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([0.0, 5.0]))
    assert top_k(a, 2) == [0, 3] and top_k(b, 2) == [5, 0]
    assert a.top_heads(2) == [(0, 0), (1, 1)]
    assert jaccard(top_k(a, 2), top_k(b, 2)) == pytest.approx(1 / 3)
    assert overlap_pvalue(2, 2, 1, 6) == pytest.approx(
        1 - math.comb(4, 2) / math.comb(6, 2))            # P(overlap >= 1)
    assert rbo(a, a) == pytest.approx(1.0)
    d = distances(a, a, ks=(2,))
    assert d["pearson"] == pytest.approx(1.0) and d["jaccard@2"] == 1.0
    assert disattenuated(0.45, 0.9, 0.5) == pytest.approx(1 - 0.45 / math.sqrt(0.45))
    assert math.isnan(disattenuated(0.5, 0.0, 0.9))


def test_reliability_known_answers():
    from interp.shift.estimator import centred, moments, reliability

    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(200, generator=gen) * 2
    for noise in (0.0, 0.1, 4.0, 8.0):
        # true map variance ~4, the mean of 40 pairs adds noise^2 / 40: r = 4 / (4 + noise^2/40)
        x = _scores(signal, 40, noise, gen)
        m = moments(centred(x[None]), torch.full((1, 40), 1 / 40, dtype=torch.float64))
        r = float(reliability(m.true_cov()[0], m.observed_cov()[0], 0))
        assert r == pytest.approx(4 / (4 + noise ** 2 / 40), abs=0.05)
    pure_noise = _scores(signal * 0, 40, 1.0, gen)
    m = moments(centred(pure_noise[None]), torch.full((1, 40), 1 / 40, dtype=torch.float64))
    assert abs(float(reliability(m.true_cov()[0], m.observed_cov()[0], 0))) < 0.3


def _compare(spec: dict[str, torch.Tensor], n=24, noise=0.3, seed=0, gap=1.0, gaps=None):
    """compare_scores on per-pair scores: each condition's map plus independent noise."""
    gen = torch.Generator().manual_seed(seed)
    scores = {name: [_scores(sig, 2 * n, noise, gen)] for name, sig in spec.items()}
    gaps = gaps or {name: [gap + 0.2 * torch.randn(2 * n, generator=gen)] for name in spec}
    return compare_scores(scores, gaps, n_pairs=n, n_boot=300, seed=seed)


def test_identical_maps_plus_noise_give_zero_and_independent_maps_give_one():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(150, generator=gen) * 2
    other = torch.randn(150, generator=gen) * 2
    spec = {c: base for c in CONDITIONS}
    spec["base-icl"] = other                                  # ICL rewires completely
    out = _compare(spec)
    assert abs(out["shift"]["ft-zs"]["estimate"]) < 0.05      # same map, only noise
    assert out["shift"]["base-icl"]["estimate"] == pytest.approx(1.0, abs=0.15)
    for name in CONDITIONS:                                   # the floor at n pairs is ~0
        floor = out["summary"][name]["noise_floor"]
        assert abs(floor["estimate"]) < 0.05 and floor["ci95"][0] <= 0.05
    # effects are the stated differences with their named shams, from shared resamples
    e = out["effects"]["icl"]
    assert e["sham"] == SHAMS["base-icl"][0]
    assert e["estimate"] == pytest.approx(out["shift"]["base-icl"]["estimate"] -
                                          out["shift"][e["sham"]]["estimate"])
    both = out["effects"]["icl_minus_ft"]
    assert both["estimate"] == pytest.approx(e["estimate"] - out["effects"]["ft"]["estimate"])
    assert both["ci95"][0] > 0


def test_the_same_scores_twice_give_a_shift_of_exactly_zero():
    gen = torch.Generator().manual_seed(4)
    x = _scores(torch.randn(150, generator=gen), 32, 1.0, gen)   # noisy: reliability ~0.9
    g = 1.0 + 0.2 * torch.randn(32, generator=gen)
    out = compare_scores({"base-zs": [x], "ft-random-delta": [x.clone()]},
                         {"base-zs": [g], "ft-random-delta": [g]}, n_pairs=16, n_boot=200)
    shift = out["shift"]["ft-random-delta"]
    assert shift["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert shift["ci95"][0] <= 0 <= shift["ci95"][1]


def test_a_map_with_no_reliability_is_refused_and_undefines_what_needs_it():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(150, generator=gen)
    spec = {c: base for c in CONDITIONS}
    spec["base-icl-other-task"] = base * 0                   # pure noise: reliability ~0
    out = _compare(spec, noise=1.0)
    assert not out["summary"]["base-icl-other-task"]["gate"]["passed"]
    assert "reliability" in out["summary"]["base-icl-other-task"]["gate"]["reason"]
    assert out["shift"]["base-icl-other-task"]["estimate"] is None
    assert out["effects"]["icl"]["estimate"] is None and out["effects"]["icl"]["reason"]
    assert out["effects"]["icl_minus_ft"]["estimate"] is None


def test_a_failing_base_zs_undefines_every_shift_but_not_the_direct_distances():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(150, generator=gen)
    gaps = {c: [1.0 + 0.2 * torch.randn(48, generator=gen)] for c in CONDITIONS}
    gaps["base-zs"] = [-0.5 + 0.1 * torch.randn(48, generator=gen)]   # no behaviour
    out = _compare({c: base for c in CONDITIONS}, gaps=gaps)
    assert all(v["estimate"] is None and "base-zs" in v["reason"] for v in out["shift"].values())
    assert out["effects_direct"]["icl_vs_ft"]["estimate"] is not None


def test_identical_gaps_on_every_pair_stop_the_comparison():
    from interp.errors import DegenerateDataError

    base = torch.randn(150, generator=torch.Generator().manual_seed(5))
    gaps = {c: [torch.full((48,), 0.7)] for c in CONDITIONS}
    with pytest.raises(DegenerateDataError, match="ignored its input"):
        _compare({c: base for c in CONDITIONS}, gaps=gaps)


def test_gate_thresholds():
    ok = {"estimate": 1.0, "ci95": [0.5, 1.5]}
    assert gate(ok, {"estimate": 0.9, "ci95": [0.8, 0.95]}) == (True, None)
    assert not gate({"estimate": 0.1, "ci95": [-0.1, 0.3]}, ok)[0]
    assert not gate(ok, {"estimate": 0.69, "ci95": [0.6, 0.8]})[0]   # the 0.7 reliability gate
    assert gate(ok, {"estimate": 0.7, "ci95": [0.5, 0.8]})[0]


@pytest.mark.parametrize("primary,secondary,code,rule", [
    ({"estimate": None, "ci95": None, "reason": "gate"}, None, "inconclusive", "undefined"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, {"estimate": 0.2}, "icl_more", "icl_more"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, {"estimate": -0.2}, "inconclusive",
     "secondary_disagrees"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, {"estimate": None}, "inconclusive",
     "secondary_undefined"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, None, "inconclusive", "secondary_undefined"),
    ({"estimate": -0.3, "ci95": [-0.5, -0.1]}, {"estimate": -0.1}, "ft_more", "ft_more"),
    ({"estimate": 0.03, "ci95": [0.01, 0.045]}, {"estimate": 0.2}, "icl_positive_below_margin",
     "icl_positive_below_margin"),
    ({"estimate": 0.08, "ci95": [0.01, 0.15]}, {"estimate": 0.2}, "icl_positive_below_margin",
     "icl_positive_below_margin"),
    ({"estimate": -0.03, "ci95": [-0.045, -0.01]}, {"estimate": -0.1},
     "ft_negative_below_margin", "ft_negative_below_margin"),
    ({"estimate": 0.04, "ci95": [0.015, 0.07]}, {"estimate": -0.17}, "inconclusive",
     "secondary_disagrees"),                                  # the demo's case
    ({"estimate": -0.03, "ci95": [-0.045, -0.01]}, None, "inconclusive", "secondary_undefined"),
    ({"estimate": 0.0, "ci95": [-0.03, 0.04]}, None, "no_difference", "equivalent"),
    ({"estimate": 0.0, "ci95": [-0.2, 0.2]}, None, "inconclusive", "otherwise"),
])
def test_verdict_follows_its_rule(primary, secondary, code, rule):
    assert decide(primary, secondary, 0.05) == (code, rule)
    assert RULES[rule][0] == code


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shift")
    config = ShiftConfig(model="tiny-random-llama", task="boolean", quick=True, out=str(out),
                         progress=False, causal=True)
    start = time.perf_counter()
    results = run_shift(config)
    return config, results, out, time.perf_counter() - start


def test_the_run_reads_back_typed(quick_run):
    from interp.shift import ConditionKey, Interval, ShiftResult

    config, results, out, _ = quick_run
    saved = json.loads((out / "results.json").read_text())
    loaded = ShiftResult.load(out)
    assert isinstance(results, ShiftResult) and loaded == saved and results == saved
    assert set(loaded.conditions) == set(CONDITIONS)
    for name, record in loaded.conditions.items():
        raw = saved["conditions"][name]
        assert isinstance(record.gap, Interval) and isinstance(record.reliability, Interval)
        assert record.gap.estimate == raw["gap"]["estimate"]
        assert record.reliability.estimate == raw["reliability"]["estimate"]
        assert list(record.gap.ci95 or []) == list(raw["gap"]["ci95"] or [])
        assert record.gate_passed == raw["gate"]["passed"]
    assert loaded.verdict.code == saved["verdict_code"]
    assert loaded.verdict.rule == saved["verdict_rule"]
    assert loaded.verdict.effect.estimate == saved["effects"]["icl_minus_ft"]["estimate"]
    assert loaded.shift["base-icl"].estimate == saved["shift"]["base-icl"]["estimate"]
    assert torch.equal(loaded.maps["ft-zs"].heads, torch.tensor(saved["maps"]["ft-zs"]["heads"]))
    assert list(loaded.conditions_frame().condition) == list(saved["conditions"])
    key = ConditionKey.parse("ft-zs/2@16")
    assert (key.name, key.seed, key.dose, str(key)) == ("ft-zs", 2, 16, "ft-zs/2@16")
    assert str(ConditionKey.parse("base-icl/0")) == "base-icl/0"
    assert sorted(map(ConditionKey.parse, ["a/10", "a/2"]))[0].seed == 2


def test_quick_run_writes_every_key_consistently(quick_run):
    config, results, out, _ = quick_run
    for name in ("report.html", "results.json", "accuracy.csv", "conditions.csv", "shift.csv",
                 "scores.safetensors", "provenance.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())   # strict JSON: no NaN
    assert set(saved["conditions"]) == set(CONDITIONS)
    for name, c in saved["conditions"].items():
        for key in ("accuracy", "gap", "reliability", "mean_prompt_tokens", "noise_floor"):
            assert key in c, (name, key)
        assert {"estimate", "ci95"} <= set(c["gap"]) and {"estimate", "ci95"} <= set(
            c["reliability"])
    for key in ("shift", "effects", "effects_secondary", "effects_direct", "equivalence_margin",
                "verdict_code", "verdict_rule", "dose_response", "demo_ids_by_stage", "timings"):
        assert key in saved, key
    # one demonstration set, shared by every stage
    icl_ids = saved["conditions"]["base-icl"]["demo_ids"]
    assert icl_ids and all(ids == icl_ids for ids in saved["demo_ids_by_stage"].values())
    assert saved["conditions"]["base-icl-shuffled"]["label_agreement"] == 0.5
    # the shuffled sham keeps base-icl's label counts, exactly half wrong (k = 4)
    real, wrong = (saved["conditions"][c]["demo_labels"] for c in ("base-icl",
                                                                   "base-icl-shuffled"))
    assert sorted(real) == sorted(wrong) and sum(a != b for a, b in zip(real, wrong)) == 2
    assert saved["conditions"]["base-icl-other-task"]["demo_labels"] is not None
    other = saved["conditions"]["base-icl-other-task"]
    assert len(other["demo_ids"]) == len(other["demo_labels"]) >= 1
    # as many demonstrations only when a set that long exists; the length is what is matched
    assert len(other["demo_ids"]) == len(real) or abs(other["length_ratio"] - 1) <= 0.25
    assert saved["conditions"]["ft-zs"]["demo_labels"] is None
    # the random update moves each matrix as far as fine-tuning did
    runs = saved["ft_runs"]["runs"]
    ft, rand = runs["ft-zs/0"]["delta_norms"], runs["ft-random-delta/0"]["delta_norms"]
    assert set(ft) == set(rand) and ft
    for name in ft:
        assert rand[name]["rank"] == ft[name]["rank"]
        assert rand[name]["spectral"] == pytest.approx(ft[name]["spectral"], rel=1e-4)
        assert rand[name]["frobenius"] == pytest.approx(ft[name]["frobenius"], rel=1e-4)
    assert all("@" in k for k in runs if k.startswith("ft-zs/0@"))
    assert runs["ft-zs/0"]["activation_effect"] > 0 and runs["ft-random-delta/0"][
        "activation_effect"] > 0
    # every condition's map checked against exact activation patching, named if below the bar
    check = saved["approximation"]
    assert set(CONDITIONS) <= set(check) and check["bar"] == 0.8
    for name in CONDITIONS:
        assert check[name]["n_pairs"] >= 1 and check[name]["passes"] == (
            check[name]["pearson"] is not None and check[name]["pearson"] >= 0.8)
        assert (f"{name} (r" in saved["verdict"]) == (not check[name]["passes"])
    assert "id='approximation'" in (out / "report.html").read_text()
    # causal tests on all n pairs of set B, random sets outside the chosen one
    causal = saved["causal"]
    assert causal["n_test_pairs"] == config.resolved().n_pairs and causal["ranking"]
    for test in ("necessity_icl", "sufficiency_ft", "icl_circuit_in_ft"):
        assert causal[test]["n_test_pairs"] == config.resolved().n_pairs
        assert causal[test]["overlap_with_chosen"] == 0
        assert causal[test]["logit_diff"]["n_prompts"] == config.resolved().n_pairs
    # shams at matched prompt length
    target = saved["conditions"]["base-icl"]["mean_prompt_tokens"]
    for sham in ("base-icl-other-task", "base-icl-shuffled"):
        assert abs(saved["conditions"][sham]["mean_prompt_tokens"] / target - 1) <= 0.25
    # effects equal the stated differences with their named shams (where defined)
    for arm, real in (("icl", "base-icl"), ("ft", "ft-zs")):
        e = saved["effects"][arm]
        if e["estimate"] is not None:
            assert e["estimate"] == pytest.approx(saved["shift"][real]["estimate"] -
                                                  saved["shift"][e["sham"]]["estimate"])
        else:
            assert e["reason"]
    code, rule = decide(saved["effects"]["icl_minus_ft"],
                        saved["effects_secondary"]["icl_minus_ft"], saved["equivalence_margin"])
    assert (saved["verdict_code"], saved["verdict_rule"]) == (code, rule)
    assert len(saved["dose_response"]["icl"]) >= 3 and len(saved["dose_response"]["ft"]) >= 3
    # every dose beside its sham at the same dose; one seed per method: no trend to test
    assert all(p["sham_accuracy"] is not None for m in ("icl", "ft")
               for p in saved["dose_response"][m])
    assert {f"ft-other-task/0@{p['step']}" for p in saved["dose_response"]["ft"]
            if p["fraction"] < 1} <= set(runs)
    trends = saved["dose_response"]["trends"]
    assert all("too few seeds" in trends[m][v]["reason"] for m in ("icl", "ft")
               for v in ("shift", "gain"))
    assert saved["conditions"]["ft-zs"]["delta_w_norm"] > 0
    assert saved["conditions"]["ft-random-delta"]["delta_w_norm"] == pytest.approx(
        saved["conditions"]["ft-zs"]["delta_w_norm"], rel=1e-4)
    assert {"necessity_icl", "sufficiency_icl", "icl_circuit_in_ft"} <= set(saved["causal"])
    assert set(saved["separating"]) == set(CONDITIONS)


def test_rerun_resumes_and_changed_settings_are_refused(quick_run, tmp_path):
    config, _, out, first = quick_run
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("accuracy.json", "scores.safetensors")}
    start = time.perf_counter()
    again = run_shift(config)
    assert time.perf_counter() - start < first / 2
    assert stamps == {p: (out / p).stat().st_mtime_ns for p in stamps}
    assert {"accuracy", "scores"} <= set(again["reused_stages"])
    other = ShiftConfig(**{**config.to_dict(), "task": "parity", "quick": True})
    with pytest.raises(StaleResultsError, match="task"):
        run_shift(other)


def test_truncated_stage_file_is_recomputed(quick_run, tmp_path):
    config, _, out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "accuracy.json").write_text('{"settings": {"mod')        # cut short by a crash
    results = run_shift(ShiftConfig(**{**config.to_dict(), "out": str(copy), "quick": True}))
    assert "accuracy" not in results["reused_stages"]
    assert json.loads((copy / "accuracy.json").read_text())["data"]


def test_report_renders_in_headless_chromium(quick_run):
    from browser import open_page

    _, _, out, _ = quick_run
    with open_page(out / "report.html") as page:
        sizes = page.wait_for("""
            const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
            return {plots: [...document.querySelectorAll('.js-plotly-plot')].map(box),
                    plotDivs: document.querySelectorAll('.plotly-graph-div').length,
                    views: [...document.querySelectorAll('.cv-view')].map(
                        v => v.children.length ? box(v) : [0, 0]),
                    conditions: document.querySelectorAll('#conditions tr').length,
                    verdict: (document.getElementById('verdict') || {}).textContent || ''};""",
                              lambda s: s["plots"] and len(s["plots"]) == s["plotDivs"]
                              and s["views"] and all(w > 0 for w, _ in s["views"]))
        page.screenshot(ARTIFACTS / "shift_report.png")
        errors = page.severe_errors()
    assert not errors, errors
    assert sizes["conditions"] == len(CONDITIONS) + 1
    assert "Verdict" in sizes["verdict"] and "Rule fired" in sizes["verdict"]
    assert len(sizes["plots"]) >= 8 and all(w > 100 and h > 100 for w, h in sizes["plots"])


def test_explorer_selects_heads_under_every_condition(quick_run):
    from browser import open_page

    _, results, out, _ = quick_run
    with open_page(out / "report.html") as page:
        page.wait_for("return !!window.interpExplorer && !!document.querySelector("
                      "'#heatmap-base-icl .nsewdrag')", bool)
        assert page.run("return window.interpExplorer.conditions()") == list(
            results["conditions"])
        for layer, head in ((0, 0), (1, 3), (2, 1)):
            assert page.run(f"return window.interpExplorer.select({layer}, {head})")
            views = page.wait_for("""
                return [...document.querySelectorAll('#explorer > [data-condition]')].map(c => ({
                    cond: c.dataset.condition,
                    info: c.querySelector('.explorer-info').textContent,
                    drawn: c.querySelector('.explorer-rendered') ?
                        c.querySelector('.explorer-rendered').children.length : 0,
                    height: c.querySelector('.explorer-view').getBoundingClientRect().height}));""",
                lambda vs: vs and all(v["drawn"] > 0 and v["height"] > 50 for v in vs))
            assert [v["cond"] for v in views] == list(results["conditions"])
            assert all(v["info"].startswith(f"L{layer}H{head}: score") for v in views)
        # a click on a heatmap cell selects that head
        page.run("""
            const div = document.getElementById('heatmap-base-icl');
            div.emit('plotly_click', {points: [{x: '2', y: '1'}]});""")
        state = page.run("return window.interpExplorer.state()")
        assert (state["layer"], state["head"]) == (1, 2)
        page.run("document.getElementById('explorer-title').scrollIntoView()")
        page.screenshot(ARTIFACTS / "explorer.png")
        errors = page.severe_errors()
        requests = page.network_requests()
    assert not errors, errors
    assert not requests, requests
    assert (out / "report.html").stat().st_size < 15_000_000


def test_compare_reproduces_the_runs_results_without_a_model(quick_run, tmp_path):
    from interp.cli import main

    _, _, out, _ = quick_run
    assert main(["--quiet", "compare", str(out), "--out", str(tmp_path / "again")]) == 0
    original = json.loads((out / "results.json").read_text())
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again.pop("reanalysis")["from"] == str(out)
    assert again == original
    # another margin changes only what depends on it
    assert main(["--quiet", "compare", str(out), "--margin", "0.2", "--out",
                 str(tmp_path / "wide")]) == 0
    wide = json.loads((tmp_path / "wide" / "results.json").read_text())
    assert wide["equivalence_margin"] == 0.2 and wide["shift"] == original["shift"]


def test_a_family_without_an_other_task_partner_is_a_task_error(monkeypatch):
    from interp.errors import TaskError
    from interp.tasks import base

    class Lonely(type(base.REGISTRY["boolean"])):
        name = "lonely"
        other_task = None
    monkeypatch.setitem(base.REGISTRY, "lonely", Lonely())
    with pytest.raises(TaskError, match="'lonely' declares no other_task"):
        ShiftConfig(model="tiny-random-llama", task="lonely")
    assert ShiftConfig(model="tiny-random-llama", task="parity").other_task == "boolean"
