import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import hypergeom

from interp.circuits import ScoreMap, distances, jaccard, layer_shift, overlap_pvalue, top_k
from interp.pipeline import CONDITIONS, ShiftConfig, compare_conditions, run_shift, verdict

ARTIFACTS = Path(os.environ.get("INTERP_ARTIFACTS", "runs/test-artifacts"))


def test_circuit_distances_hand_values():
    a = ScoreMap(torch.tensor([[3.0, 0.0], [0.0, -2.0]]), torch.tensor([1.0, 0.0]))
    b = ScoreMap(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([0.0, 5.0]))
    assert top_k(a, 2) == {0, 3}                         # L0H0 and L1H1
    assert top_k(b, 2) == {0, 5}                         # L0H0 and L1MLP
    assert a.top_heads(2) == [(0, 0), (1, 1)] and b.top_heads(1) == [(0, 0)]
    assert jaccard(top_k(a, 2), top_k(b, 2)) == pytest.approx(1 / 3)
    assert overlap_pvalue(2, 2, 1, 6) == pytest.approx(hypergeom.sf(0, 6, 2, 2))
    assert torch.allclose(layer_shift(a, b), torch.tensor([1.0, 9.0]))
    d = distances(a, a, ks=(2,))
    assert d["shift"] == pytest.approx(0.0, abs=1e-9) and d["jaccard@2"] == 1.0


def _synthetic(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 3, generator=gen) * 2
    perm = base.flatten()[torch.randperm(12, generator=gen)].reshape(4, 3)

    def cond(heads):
        noise = torch.randn(4, 3, n, generator=gen) * 0.1
        return {"heads": heads[..., None] + noise, "mlp": torch.randn(4, n, generator=gen) * 0.1,
                "ids": [f"q{i}" for i in range(n)]}
    return {"base-zs": cond(base), "base-icl": cond(perm), "ft-zs": cond(base + 0.05)}


def test_verdict_finds_the_larger_shift_and_its_interval():
    config = ShiftConfig(model="tiny-random-llama", task="boolean", n_boot=200)
    scores = _synthetic()
    result = compare_conditions(config, scores)
    assert result["point"]["icl"]["shift"] > 0.5 > result["point"]["ft"]["shift"]
    lo, hi = result["ci95"]["diff"]
    assert 0 < lo <= hi
    assert "ICL shifted the circuit more" in verdict(result)
    # swap the roles: now fine-tuning is the one that moved
    swapped = {"base-zs": scores["base-zs"], "base-icl": scores["ft-zs"],
               "ft-zs": scores["base-icl"]}
    assert "Fine-tuning shifted the circuit more" in verdict(compare_conditions(config, swapped))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shift")
    config = ShiftConfig(model="tiny-random-llama", task="boolean", quick=True, out=str(out),
                         progress=False)
    start = time.perf_counter()
    results = run_shift(config)
    return config, results, out, time.perf_counter() - start


def test_quick_shift_run_writes_every_stage(quick_run):
    config, results, out, _ = quick_run
    for name in ("report.html", "results.json", "accuracy.csv", "shift.csv",
                 "scores.safetensors", "ft/model.safetensors"):
        assert (out / name).is_file(), name
    conds = {r["model_condition"] for r in results["accuracy"]}
    assert conds == set(CONDITIONS)
    assert set(results["faithfulness"]) >= {"base-icl", "icl-circuit@ft-zs"}
    assert len(results["per_layer_shift"]["icl"]) == 3
    assert set(results["logit_lens"]) == set(CONDITIONS)
    heads = results["icl_heads"]
    assert len(heads["top"]) == heads["k"] == max(config.ks)
    assert set(heads["conditions"]) == set(CONDITIONS)
    assert 0 <= heads["conditions"]["ft-zs"]["count"] <= heads["k"]
    assert 0 <= heads["injection"]["with_function_vector"] <= 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdict"] == results["verdict"] and "shift(ICL)" in saved["verdict"]


def test_rerun_resumes_without_recomputing(quick_run):
    config, _, out, first = quick_run
    stamps = {p: (out / p).stat().st_mtime_ns for p in
              ("accuracy.json", "scores.safetensors", "ft/model.safetensors")}
    start = time.perf_counter()
    run_shift(config)
    assert time.perf_counter() - start < first / 2
    assert stamps == {p: (out / p).stat().st_mtime_ns for p in stamps}


def test_report_renders_in_headless_chromium(quick_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "chromium and chromedriver come with `make install`"
    _, _, out, _ = quick_run
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get((out / "report.html").resolve().as_uri())
        deadline = time.time() + 60
        sizes = []
        while time.time() < deadline:
            sizes = driver.execute_script("""
                const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
                return {
                  plots: [...document.querySelectorAll('.js-plotly-plot')].map(box),
                  plotDivs: document.querySelectorAll('.plotly-graph-div').length,
                  views: [...document.querySelectorAll('.cv-view')].map(
                      v => v.children.length ? box(v) : [0, 0]),
                  iclHeads: (document.getElementById('icl-heads') || {}).textContent || '',
                };""")
            ready = sizes["plots"] and len(sizes["plots"]) == sizes["plotDivs"] and all(
                w > 0 and h > 0 for w, h in sizes["views"]) and sizes["views"]
            if ready:
                break
            time.sleep(0.5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "shift_report.png"))
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert not errors, errors
    assert "ft-zs:" in sizes["iclHeads"]   # the ICL-heads panel: heads the FT circuit uses
    assert len(sizes["plots"]) >= 9 and all(w > 100 and h > 100 for w, h in sizes["plots"])
    assert len(sizes["views"]) == 3 and all(w > 0 and h > 0 for w, h in sizes["views"])
    assert (ARTIFACTS / "shift_report.png").stat().st_size > 10_000
