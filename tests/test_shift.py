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
from interp.shift.compare import Bootstrap, Maps, compare, gate
from interp.shift.verdict import RULES, decide
from interp.stats import split_half

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


def test_split_half_reliability_known_answers():
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(200, generator=gen) * 2
    clean = split_half(_scores(signal, 40, 0.1, gen), n_splits=20)
    noisy = split_half(_scores(signal * 0, 40, 1.0, gen), n_splits=20)
    assert clean.item() > 0.99 and abs(noisy.item()) < 0.2
    # duplicated units never sit in both halves: a resample of one unit has no reliability
    x = _scores(signal, 10, 1.0, gen)
    w = torch.zeros(1, 10, dtype=torch.float64)
    w[0, 3] = 1.0
    assert not torch.isfinite(split_half(x, 5, 0, w)).all()


def _maps(spec: dict[str, torch.Tensor], n=24, noise=0.3, seed=0, gap=1.0):
    gen = torch.Generator().manual_seed(seed)
    boot = Bootstrap.draw(n, 300, 1, 1, seed)
    return {name: Maps(name, [torch.cat([_scores(sig, n, noise, gen), _scores(sig, n, noise,
                                                                              gen)], 1)],
                       [gap + 0.2 * torch.randn(2 * n, generator=gen)], n, boot, 20, seed)
            for name, sig in spec.items()}, boot


def test_identical_maps_plus_noise_give_zero_and_independent_maps_give_one():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(150, generator=gen) * 2
    other = torch.randn(150, generator=gen) * 2
    spec = {c: base for c in CONDITIONS}
    spec["base-icl"] = other                                  # ICL rewires completely
    maps, boot = _maps(spec)
    out = compare(maps, boot)
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


def test_a_map_with_no_reliability_is_refused_and_undefines_what_needs_it():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(150, generator=gen)
    spec = {c: base for c in CONDITIONS}
    spec["base-icl-other-task"] = base * 0                   # pure noise: reliability ~0
    maps, boot = _maps(spec, noise=1.0)
    out = compare(maps, boot)
    assert not out["summary"]["base-icl-other-task"]["gate"]["passed"]
    assert "reliability" in out["summary"]["base-icl-other-task"]["gate"]["reason"]
    assert out["shift"]["base-icl-other-task"]["estimate"] is None
    assert out["effects"]["icl"]["estimate"] is None and out["effects"]["icl"]["reason"]
    assert out["effects"]["icl_minus_ft"]["estimate"] is None


def test_a_failing_base_zs_undefines_every_shift_but_not_the_direct_distances():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(150, generator=gen)
    maps, boot = _maps({c: base for c in CONDITIONS})
    maps["base-zs"].gap_a = [torch.full((24,), -0.5, dtype=torch.float64)]   # no behaviour
    out = compare(maps, boot)
    assert all(v["estimate"] is None and "base-zs" in v["reason"] for v in out["shift"].values())
    assert out["effects_direct"]["icl_vs_ft"]["estimate"] is not None


def test_gate_thresholds():
    ok = {"estimate": 1.0, "ci95": [0.5, 1.5]}
    assert gate(ok, {"estimate": 0.9, "ci95": [0.8, 0.95]}) == (True, None)
    assert not gate({"estimate": 0.1, "ci95": [-0.1, 0.3]}, ok)[0]
    assert not gate(ok, {"estimate": 0.4, "ci95": [0.1, 0.6]})[0]


@pytest.mark.parametrize("primary,secondary,code,rule", [
    ({"estimate": None, "ci95": None, "reason": "gate"}, None, "inconclusive", "undefined"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, {"estimate": 0.2}, "icl_more", "icl_more"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, {"estimate": -0.2}, "inconclusive", "otherwise"),
    ({"estimate": 0.3, "ci95": [0.1, 0.5]}, {"estimate": None}, "icl_more", "icl_more"),
    ({"estimate": -0.3, "ci95": [-0.5, -0.1]}, {"estimate": -0.1}, "ft_more", "ft_more"),
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
