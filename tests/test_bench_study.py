"""The study benchmark: its analytic FLOP count by hand, and its JSON lines on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def meter_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_study
        yield bench_study
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_flop_meter_counts_a_forward_by_hand(meter_module):
    from interp.engine import prefix_cache
    from interp.models import load_model

    model = load_model("tiny-random-llama", device="cpu")
    meter = meter_module.FlopMeter(model)
    cfg = model.hf.config
    block = sum(p.numel() for n, p in model.hf.get_decoder().named_parameters()
                if p.dim() == 2 and "embed" not in n)
    L, attn, d, V = model.n_layers, model.n_heads * model.d_head, cfg.hidden_size, cfg.vocab_size
    meter.stage = "plain"
    with torch.no_grad():
        model.hf(input_ids=torch.ones(2, 5, dtype=torch.long), logits_to_keep=1)
    expected = 2 * (2 * block * 5 + 4 * L * attn * 5 * 3) + 2 * 2 * d * V   # last row only
    assert meter.flops["plain"] == pytest.approx(expected)
    meter.stage = "cached"                      # 3 new tokens behind a 4-token prefix
    cache = prefix_cache(model, torch.ones(1, 4, dtype=torch.long))
    meter.flops.pop("cached", None)
    with torch.no_grad():
        model.hf(input_ids=torch.ones(1, 3, dtype=torch.long), past_key_values=cache,
                 use_cache=True, logits_to_keep=0)
    assert meter.flops["cached"] == pytest.approx(2 * block * 3 + 4 * L * attn * 3 * (4 + 2)
                                                  + 2 * 3 * d * V)
    one = 2 * block * 5 + 4 * L * attn * 5 * 3
    meter.stage = "grad"                 # attribution: activation gradients only, x2
    model.hf(input_ids=torch.ones(1, 5, dtype=torch.long), logits_to_keep=1)
    assert meter.flops["grad"] == pytest.approx(2 * one + 2 * 2 * d * V)
    meter.stage = "finetune"             # full fine-tuning: weight gradients too, x3
    assert any(p.requires_grad for p in model.hf.parameters())
    model.hf(input_ids=torch.ones(1, 5, dtype=torch.long), logits_to_keep=1)
    assert meter.flops["finetune"] == pytest.approx(3 * one + 3 * 2 * d * V)   # head too
    meter.stage = "resumed"              # layer 0 resumed from its cached output: not counted
    from interp.engine import _skipping
    with torch.no_grad(), _skipping(model.hf, 1, torch.zeros(1, 5, d)):
        model.hf(input_ids=torch.ones(1, 5, dtype=torch.long), logits_to_keep=1)
    assert meter.flops["resumed"] == pytest.approx(one * (L - 1) / L + 2 * d * V)


def test_bench_study_prints_stage_lines_on_the_tiny_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_study.py"), "--model",
                          "tiny-random-llama", "--quick", "--out", str(tmp_path / "cell")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    stages = {r["stage"]: r for r in rows if "stage" in r}
    fields = {"stage", "seconds", "flops", "gflops", "peak_gflops", "dtype"}
    worked = [r for s, r in stages.items() if r["flops"] > 0 and s != "cell"]
    assert len(worked) >= 4 and all(fields <= set(r) for r in stages.values())
    for r in worked:
        assert r["dtype"] == "float32" and r["peak_gflops"] > 0
        assert r["gflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e9, abs=0.01)
    assert {"finetune", "accuracy", "scores", "causal"} <= set(stages)
    assert stages["cell"]["flops"] >= sum(r["flops"] for r in worked)
