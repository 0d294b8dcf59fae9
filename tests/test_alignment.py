import math

import pytest
import torch

from interp.analysis.alignment import (compare, kendall, rec2ftp, record, sim_am, sim_am_delta,
                                       sim_aou)


def _orthonormal(d: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return q.T  # k orthonormal rows


def test_random_update_construction_of_the_paper():
    """z, z + r, z + r' with |r|^2 = |r'|^2 = 3 |z|^2, all three orthogonal: SimAOU_norm = 0.25
    exactly, while the unnormalised SimAOU is 0."""
    z, r, r2 = _orthonormal(64, 3) * torch.tensor([[2.0], [2.0 * math.sqrt(3)],
                                                  [2.0 * math.sqrt(3)]], dtype=torch.float64)
    assert sim_aou(z + r, z + r2, z, normalize=True).item() == pytest.approx(0.25, abs=1e-6)
    assert sim_aou(z + r, z + r2, z).item() == pytest.approx(0.0, abs=1e-6)


def test_identical_and_opposite_updates():
    gen = torch.Generator().manual_seed(1)
    zs, delta = torch.randn(5, 3, 16, generator=gen), torch.randn(5, 3, 16, generator=gen)
    assert torch.allclose(sim_aou(zs + delta, zs + delta, zs), torch.ones(5, 3))
    assert torch.allclose(sim_aou(zs + delta, zs - delta, zs), -torch.ones(5, 3))
    assert torch.allclose(sim_am_delta(zs + delta, zs - 2 * delta, zs), -torch.ones(5, 3))
    assert torch.allclose(sim_am(zs, 3 * zs), torch.ones(5, 3))
    # a zero update has no direction: undefined, not 0
    assert torch.isnan(sim_am_delta(zs, zs + delta, zs)).all()


def test_sim_am_hand_value():
    assert sim_am(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2))


def test_kendall_hand_computed():
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs (1,2) c, (1,3) c, (2,3) d -> (2 - 1) / 3
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_rec2ftp_hand_computed():
    zs = [0.5, 0.5, 0.5, 0.5, 0.5]
    ft = [0.6, 0.7, 0.4, 0.9, 0.5]    # FT improves examples 0, 1, 3
    icl = [0.8, 0.4, 0.9, 0.6, 0.9]   # ICL improves 0, 2, 3, 4
    assert rec2ftp(icl, ft, zs) == pytest.approx(2 / 3)
    assert math.isnan(rec2ftp(icl, zs, zs))


def test_recording_and_comparison_on_a_model():
    from interp.models import load_model
    from interp.prompts import demo_pool, sample_demos
    from interp.tasks import generate

    model = load_model("tiny-random-llama")
    queries = generate("boolean", 3, seed=0)
    demos = sample_demos(demo_pool("boolean", 16), 2)
    zs, icl = record(model, queries), record(model, queries, demos)
    assert zs.aou.shape == (3, model.n_layers, model.d_model)
    assert icl.am[0].shape == zs.am[0].shape  # the query's own tokens in both settings
    assert not torch.allclose(icl.aou, zs.aou)
    same = compare(zs, icl, icl)                # FT identical to ICL: perfect alignment
    for name in ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_delta"):
        assert same[name] == pytest.approx(1.0, abs=1e-5), name
    assert len(same["per_layer"]["SimAOU"]) == model.n_layers
    assert -1.0 <= same["Kendall"] <= 1.0


def test_batched_recording_equals_full_prompt_forwards():
    """Queries run in length groups behind a shared demonstration cache; each must record what a
    plain forward of its own whole prompt (demonstrations + query) gives."""
    from interp.engine import encode
    from interp.models import load_model
    from interp.prompts import build_prompt, demo_pool, sample_demos
    from interp.tasks import generate

    model = load_model("tiny-random-llama")
    tok = model.tokenizer
    queries = generate("boolean", 6, seed=3)
    demos = sample_demos(demo_pool("boolean", 16), 3)
    prefix = encode(tok, build_prompt(queries[0], demos).prefix, first=True)
    q_ids = [encode(tok, q.input, first=False) for q in queries]
    assert len({len(x) for x in q_ids}) > 1 and len(q_ids) > len({len(x) for x in q_ids})
    rec = record(model, queries, demos)
    L, n0 = model.n_layers, rec.demo_span[0]
    for i, q in enumerate(queries):
        ids = torch.tensor([prefix + q_ids[i]])
        logits, cache = model.bridge.run_with_cache(ids)
        n = len(q_ids[i])
        aou = torch.stack([cache[f"blocks.{l}.hook_attn_out"][0, -1] for l in range(L)])
        am = torch.stack([cache[f"blocks.{l}.attn.hook_attn_scores"][0, :, -1, -n:]
                          for l in range(L)])
        att = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1, n0:len(prefix)]
                           .sum(0) for l in range(L)])
        torch.testing.assert_close(rec.aou[i], aou, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec.am[i], am, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec.demo_attention[i], att, atol=1e-5, rtol=1e-4)
        choice_ids = [tok(" " + c, add_special_tokens=False).input_ids[-1] for c in q.choices]
        probs = torch.softmax(logits[0, -1, choice_ids], -1)
        assert rec.gold[i].item() == pytest.approx(probs[q.choices.index(q.target)].item(),
                                                   abs=1e-5)
    qs = torch.stack([cache[f"blocks.{l}.attn.hook_q"][0, n0:len(prefix)] for l in range(L)])
    torch.testing.assert_close(rec.demo_queries, qs.permute(0, 2, 1, 3), atol=1e-5, rtol=1e-4)


def test_swapped_weights_record_like_a_freshly_bridged_fine_tuned_model():
    from interp.align import swapped_kv
    from interp.finetune import train_gd
    from interp.models import load_model
    from interp.tasks import generate

    template = load_model("tiny-random-llama")
    queries = generate("boolean", 4, seed=0)
    ft = template.copy()
    train_gd(ft, generate("boolean", 3, seed=1, split="demo"), "gd-kv", lr=0.05, progress=False)
    base = template.copy()
    before = record(base, queries)
    with swapped_kv(base, ft):
        swapped = record(base, queries)
    fresh = record(ft, queries)
    torch.testing.assert_close(swapped.aou, fresh.aou)
    assert not torch.allclose(swapped.aou, before.aou)
    torch.testing.assert_close(record(base, queries).aou, before.aou)  # restored afterwards
