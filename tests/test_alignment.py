import math

import pytest
import torch

from interp.analysis.alignment import (
    Recording,
    compare,
    kendall,
    kendall_icl_ft,
    rec2ftp,
    record,
    sim_am,
    sim_am_delta,
    sim_aou,
    zero_updates,
)


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
    # a zero update scores 0, as torch's cosine_similarity(eps=1e-8) in the reference code
    assert (sim_am_delta(zs, zs + delta, zs) == 0).all()
    assert zero_updates(zs - zs, zs).all() and not zero_updates(delta, zs).any()


def test_sim_am_hand_value():
    assert sim_am(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2))


def test_kendall_hand_computed():
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs (1,2) c, (1,3) c, (2,3) d -> (2 - 1) / 3
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_rec2ftp_counts_correctness_as_dai_et_al():
    """Among queries zero-shot gets wrong and FT gets right, the share ICL gets right."""
    zs = [False, False, False, True, False, True]
    ft = [True, True, False, True, True, False]     # fixes 0, 1, 4 (3 is not a fix: ZS right)
    icl = [True, False, True, True, True, True]     # of 0, 1, 4 gets 0 and 4
    value, n = rec2ftp(icl, ft, zs)
    assert n == 3 and value == pytest.approx(2 / 3)
    value, n = rec2ftp(icl, zs, zs)
    assert n == 0 and math.isnan(value)


def test_kendall_uses_queries_of_the_fine_tuning_passes():
    """Implied FT attention = sum_h Q'_h . q_h; a hand-made case where it orders the tokens as
    ICL's attention does gives tau 1, the reverse -1."""
    L, T, H, d = 2, 4, 2, 3
    q_last = torch.zeros(L, H, d)
    q_last[..., 0] = 1.0                                   # picks each token's first dimension
    ft_q = torch.zeros(L, T, H, d)
    ft_q[..., 0] = torch.arange(T, dtype=torch.float)[None, :, None]   # implied = 2 * t
    att = torch.arange(T, dtype=torch.float).repeat(L, 1)  # ICL attends more to later tokens
    icl = Recording(torch.zeros(1, L, 4), [torch.zeros(L, H, 2)], torch.zeros(1),
                    torch.zeros(1, dtype=torch.bool), [q_last], [att], list(range(T)))
    ft = Recording(torch.zeros(1, L, 4), [torch.zeros(L, H, 2)], torch.zeros(1),
                   torch.zeros(1, dtype=torch.bool), [q_last])
    tau, random_tau = kendall_icl_ft(icl, ft, ft_q)
    assert tau == 1.0 and -1.0 <= random_tau <= 1.0
    tau, _ = kendall_icl_ft(icl, ft, -ft_q)
    assert tau == -1.0


def test_recording_and_comparison_on_a_model():
    from interp.models import load_model
    from interp.prompts import choose_demos
    from interp.tasks import generate

    model = load_model("tiny-random-llama")
    queries = generate("boolean", 3, seed=0)
    demos = choose_demos("boolean", 2)
    zs, icl = record(model, queries), record(model, queries, demos)
    assert zs.aou.shape == (3, model.n_layers, model.d_model)
    assert icl.am[0].shape == zs.am[0].shape  # the query's own tokens in both settings
    assert not torch.allclose(icl.aou, zs.aou)
    same = compare(zs, icl, icl)                # FT identical to ICL: perfect alignment
    for name in ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_delta"):
        assert same[name] == pytest.approx(1.0, abs=1e-5), name
    assert len(same["per_layer"]["SimAOU"]) == model.n_layers
    assert same["zero_updates"]["aou_icl"] == 0
    assert icl.demo_attention[0].shape[-1] == len(icl.demo_positions)


def test_batched_recording_equals_full_prompt_forwards():
    """Queries run in length groups behind a shared demonstration cache; each must record what a
    plain forward of its own whole prompt (demonstrations + query) gives."""
    from interp.analysis.alignment import demo_prefix
    from interp.engine import encode
    from interp.models import load_model
    from interp.prompts import choose_demos
    from interp.tasks import generate

    model = load_model("tiny-random-llama")
    tok = model.tokenizer
    queries = generate("boolean", 6, seed=3)
    demos = choose_demos("boolean", 3)
    prefix, positions = demo_prefix(tok, "boolean", demos)
    q_ids = [encode(tok, q.input, first=False) for q in queries]
    assert len({len(x) for x in q_ids}) > 1 and len(q_ids) > len({len(x) for x in q_ids})
    rec = record(model, queries, demos)
    L = model.n_layers
    for i, q in enumerate(queries):
        ids = torch.tensor([prefix + q_ids[i]])
        logits, cache = model.bridge.run_with_cache(ids)
        n = len(q_ids[i])
        aou = torch.stack([cache[f"blocks.{l}.hook_attn_out"][0, -1] for l in range(L)])
        am = torch.stack([cache[f"blocks.{l}.attn.hook_attn_scores"][0, :, -1, -n:]
                          for l in range(L)])
        att = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1, positions]
                           .sum(0) for l in range(L)])
        torch.testing.assert_close(rec.aou[i], aou, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec.am[i], am, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec.demo_attention[i], att, atol=1e-5, rtol=1e-4)
        choice_ids = [tok(" " + c, add_special_tokens=False).input_ids[-1] for c in q.choices]
        probs = torch.softmax(logits[0, -1, choice_ids], -1)
        assert rec.gold[i].item() == pytest.approx(probs[q.choices.index(q.target)].item(),
                                                   abs=1e-5)
        assert bool(rec.correct[i]) == bool(probs.argmax() == q.choices.index(q.target))


def test_fine_tuning_pass_queries_align_with_icl_demonstration_tokens():
    """The queries train_gd records are each demonstration's own tokens in its own pass, one
    per ICL demonstration position; float32 is required and a zero update is refused."""
    from interp.analysis.alignment import demo_prefix
    from interp.errors import ConfigError
    from interp.finetune import train_gd
    from interp.models import load_model
    from interp.prompts import choose_demos

    model = load_model("tiny-random-llama")
    demos = choose_demos("boolean", 3)
    _, positions = demo_prefix(model.tokenizer, "boolean", demos)
    summary = train_gd(model.copy(), demos, "gd-kv", lr=0.05, progress=False,
                       record_queries=True)
    q = summary["queries"]
    assert q.shape == (model.n_layers, len(positions), model.n_heads, model.d_head)
    with pytest.raises(ConfigError, match="unchanged"):
        train_gd(model.copy(), demos, "gd-kv", lr=1e-30, progress=False)
    half = model.copy()
    half.hf.to(torch.bfloat16)
    with pytest.raises(ConfigError, match="float32"):
        train_gd(half, demos, "gd-kv", lr=0.05, progress=False)


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
