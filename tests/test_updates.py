"""The core under the shift experiment checked against references: weight updates from LoRA
factors against peft's own merge (Llama's Linear and GPT-2's transposed Conv1D), updates saved
and loaded, dose-response conditions and points, and the logit lens against an unembedding
computed by hand."""

import pytest
import torch
from archs import tiny_model_dir

from interp.finetune.deltas import (
    LowRank,
    activation_effect,
    delta_from_factors,
    delta_norms,
    difference,
    load_update,
    lora_factors,
    matrix_spectrum,
    norms,
    random_like,
    save_update,
    spectrum,
    total_norm,
)

TARGETS = {"llama": dict(target_modules=["q_proj", "v_proj", "down_proj"]),
           "gpt2": dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)}


@pytest.fixture(scope="module")
def archs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("archs")


def _peft(arch: str, root):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch, root))
    base = {n: p.detach().clone() for n, p in hf.named_parameters()}
    net = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, **TARGETS[arch]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():       # B starts at zero: give the update a direction
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net, base


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_lora_factors_give_peffs_merged_update(arch, archs_root):
    from interp.finetune.trainer import merge_lora_state

    net, base = _peft(arch, archs_root)
    delta = delta_from_factors(lora_factors(net))
    by_hand = merge_lora_state(dict(net.state_dict()), net)   # before peft merges in place
    merged = dict(net.merge_and_unload().named_parameters())
    reference = difference(merged, base)
    assert sorted(delta) == sorted(reference) and len(delta) >= 4
    for name, d in delta.items():
        assert d.shape == base[name].shape, name        # Conv1D's transpose is undone
        torch.testing.assert_close(d, reference[name], rtol=1e-4, atol=1e-6)
    for name, value in merged.items():
        torch.testing.assert_close(by_hand[name], value, rtol=1e-5, atol=1e-6)


def test_updates_are_saved_and_loaded_as_they_were(tmp_path, archs_root):
    net, _ = _peft("llama", archs_root)
    factors = lora_factors(net)
    save_update(tmp_path / "lora", {"factors": factors})
    loaded = load_update(tmp_path / "lora")
    expected = delta_from_factors(factors)
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    full = {"w": torch.arange(6.0).reshape(2, 3)}
    save_update(tmp_path / "full", {"delta": full})
    assert torch.equal(load_update(tmp_path / "full")["w"], full["w"])
    assert load_update(tmp_path / "missing") is None
    (tmp_path / "full.safetensors").write_bytes(b"damaged")
    assert load_update(tmp_path / "full") is None


def test_update_norms_and_random_updates_by_hand():
    delta = {"a": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([[12.0]])}
    assert norms(delta) == {"a": 5.0, "b": 12.0}
    assert total_norm(delta) == pytest.approx(13.0) and total_norm({}) == 0.0
    r0, r0_again, r1 = random_like(delta, 0), random_like(delta, 0), random_like(delta, 1)
    assert norms(r0) == pytest.approx(norms(delta))
    assert torch.equal(r0["a"], r0_again["a"]) and not torch.equal(r0["a"], r1["a"])
    # a LoRA-like update: the random one has its rank and singular values, another direction
    gen = torch.Generator().manual_seed(0)
    low = {"w": torch.randn(96, 4, generator=gen) @ torch.randn(4, 64, generator=gen),
           "full": torch.randn(24, 16, generator=gen)}
    rand = random_like(low, seed=5)
    for name in low:
        mine, theirs = delta_norms(rand)[name], delta_norms(low)[name]
        assert mine["rank"] == theirs["rank"] == min(4 if name == "w" else 16, 16)
        assert torch.allclose(spectrum(rand[name]), spectrum(low[name]), rtol=1e-5)
        assert mine["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(low[name], 2)),
                                                 rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(rand["w"].flatten(), low["w"].flatten(), 0)
    assert abs(float(cosine)) < 0.2
    # matrices whose names have the same characters (layers 11 and 20, anagrams) get
    # independent directions, not one shared stream
    same = {f"model.layers.{i}.self_attn.q_proj.weight": low["w"] for i in (11, 20)}
    a, b = random_like(same, seed=0).values()
    assert abs(float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0))) < 0.2


def test_factored_updates_match_their_dense_matrices():
    """A LoRA update stays factored in memory: its matrices, spectra, norms and random twin
    equal those computed from the dense matrices."""
    gen = torch.Generator().manual_seed(1)
    factors = {"w": {"A": torch.randn(4, 64, generator=gen), "B": torch.randn(96, 4, generator=gen),
                     "scaling": 0.5, "transpose": False},
               "t": {"A": torch.randn(3, 20, generator=gen), "B": torch.randn(30, 3, generator=gen),
                     "scaling": 2.0, "transpose": True}}
    low = delta_from_factors(factors)
    dense = {"w": 0.5 * factors["w"]["B"] @ factors["w"]["A"],
             "t": (2.0 * factors["t"]["B"] @ factors["t"]["A"]).T}
    assert isinstance(low, LowRank) and sorted(low) == ["t", "w"] and "w" in low
    assert "x" not in low and low["t"].shape == (20, 30)
    for name in dense:
        torch.testing.assert_close(low[name], dense[name])
        torch.testing.assert_close(matrix_spectrum(low, name), spectrum(dense[name]))
        assert len(matrix_spectrum(low, name)) == (4 if name == "w" else 3)
    for name, row in delta_norms(low).items():
        assert row == pytest.approx(delta_norms(dense)[name])
    rand, rand_dense = random_like(low, seed=3), random_like(dense, seed=3)
    assert isinstance(rand, LowRank)
    for name in dense:     # the same random frames and singular values, factored or not
        torch.testing.assert_close(rand[name], rand_dense[name], rtol=1e-4, atol=1e-5)
    # its reach on inputs: ||dW x|| by hand
    x = torch.randn(3, 64, generator=gen)
    assert activation_effect({"w": x}, {"w": low["w"]}) == pytest.approx(
        float((x @ low["w"].T).norm(dim=-1).mean()), rel=1e-5)
    after = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([5.0])}
    assert list(difference(after, {"a": torch.tensor([1.0, 0.0]), "b": after["b"]})) == ["a"]


def test_dose_conditions_and_steps(tiny):
    from interp.errors import ConfigError
    from interp.shift.conditions import dose_conditions
    from interp.shift.config import ShiftConfig
    from interp.shift.training import dose_steps

    config = ShiftConfig(model="tiny-random-llama", shots=2, n_train=32, demo_seeds=2,
                         ft_seeds=1, dose_shots=(1, 4))
    steps = dose_steps(config)                    # 32 examples / batch 8 = 4 steps
    assert steps == {0.25: 1, 0.5: 2, 1.0: 4}
    doses = dose_conditions(config, steps, tiny.tokenizer)
    icl = [d for d in doses if d.name.startswith("icl@")]
    assert [(d.name, d.seed) for d in icl] == [(f"icl@{k}", s) for s in (0, 1) for k in (1, 2, 4)]
    for s in (0, 1):                              # nested: each dose extends the smaller one
        seed_demos = [d.demos for d in icl if d.seed == s]
        assert all(small == big[:len(small)] for small, big in zip(seed_demos, seed_demos[1:]))
        assert [len(d) for d in seed_demos] == [1, 2, 4]
    assert icl[0].demos != icl[3].demos           # demonstration seeds differ
    # each dose beside its sham: other-task demonstrations at that k, their length ratio kept
    # (a point whose sham is beyond the length tolerance is gated out: test_dose_points_by_hand)
    from interp.shift.conditions import prefix_length
    length = prefix_length(tiny.tokenizer)
    shams = {(d.name, d.seed): d for d in doses if d.name.startswith("icl-sham@")}
    for d in icl:
        sham = shams[(d.name.replace("icl@", "icl-sham@"), d.seed)]
        assert sham.other_task == config.other_task and sham.demos != d.demos
        assert sham.length_ratio == pytest.approx(
            length(config.other_task, sham.demos) / length(config.task, d.demos))
    assert [(d.name, d.update) for d in doses if d.name.startswith("ft")] == [
        ("ft@1", "ft-zs/0@1"), ("ft-sham@1", "ft-other-task/0@1"), ("ft@2", "ft-zs/0@2"),
        ("ft-sham@2", "ft-other-task/0@2"), ("ft@4", "ft-zs/0"), ("ft-sham@4", "ft-other-task/0")]
    with pytest.raises(ConfigError, match="distinct"):
        dose_steps(ShiftConfig(model="tiny-random-llama", n_train=8))


def test_dose_points_by_hand():
    from interp.shift.conditions import Condition
    from interp.shift.config import ShiftConfig
    from interp.shift.dose import dose_points

    config = ShiftConfig(model="tiny-random-llama", n_pairs=6, quick=True)
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(4, 1, generator=gen) * 3

    def maps(noise, gap=2.0):
        heads = signal.reshape(2, 2, 1) + noise * torch.randn(2, 2, 12, generator=gen)
        return {"heads": heads, "mlp": signal[:2] + noise * torch.randn(2, 12, generator=gen),
                "clean": torch.full((12,), gap) + 0.1 * torch.randn(12, generator=gen),
                "corrupt": torch.zeros(12)}
    zs = maps(0.01)
    conds = [Condition("icl@2", 0), Condition("icl-sham@2", 0, length_ratio=1.2),
             Condition("ft@4", 0, update="ft-zs/0"),
             Condition("ft-sham@4", 0, update="ft-other-task/0")]
    scores = {c.key: {"counterfactual": maps(0.01)} for c in conds}
    scores["ft-sham@4/0"]["counterfactual"] = maps(0.01, gap=0.05)   # below the gap gate
    accuracy = {k: {"pattern": v} for k, v in zip(
        scores, ([1, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]))}
    out = dose_points(config, conds, scores, accuracy, [1, 0, 0, 0], zs,
                      {"base-zs": (True,)}, {0.5: 2, 1.0: 4})
    (icl,), (ft,) = out["icl"], out["ft"]
    assert icl["shots"] == 2 and ft["step"] == 4 and ft["fraction"] == 1.0
    assert icl["accuracy"] == 0.75 and icl["accuracy_gain"] == 0.5 and ft["accuracy_gain"] == 0
    assert icl["sham_accuracy"] == 0.5 and icl["corrected_gain"] == 0.25
    assert ft["corrected_gain"] == 0.25                      # gains need no gate
    assert abs(icl["shift"]) < 0.01 and icl["reliability"] > 0.99   # the same map as base-zs
    assert icl["corrected_shift"] == pytest.approx(icl["shift"] - icl["sham_shift"])
    assert ft["sham_passes"] is False and ft["corrected_shift"] is None   # the gated sham
    assert "too few seeds" in out["trends"]["icl"]["shift"]["reason"]
    conds[1].length_ratio = 1.3                 # beyond the length tolerance: needs no map
    del scores["icl-sham@2/0"]
    long = dose_points(config, conds, scores, accuracy, [1, 0, 0, 0], zs,
                       {"base-zs": (True,)}, {0.5: 2, 1.0: 4})["icl"][0]
    assert long["sham_passes"] is False and long["corrected_shift"] is None
    assert long["corrected_gain"] == 0.25
    assert long["sham_accuracy"] == 0.5                     # its accuracy still counts
    failed = dose_points(config, conds, scores, accuracy, [1, 0, 0, 0], zs,
                         {"base-zs": (False,)}, {0.5: 2, 1.0: 4})
    assert failed["icl"][0]["shift"] is None and "base-zs fails" in failed["reason"]


def test_logit_lens_is_the_unembedding_by_hand(tiny):
    from interp.arch import unembed
    from interp.shift.probes import _last_resid

    hf = tiny.hf
    prefix, suffixes = [1, 17, 29], [[5, 6, 7], [8, 9, 10]]
    resid = _last_resid(tiny, prefix, suffixes)                    # [batch, layer, d_model]
    assert resid.shape == (2, tiny.n_layers, hf.config.hidden_size)
    norm = hf.model.norm
    for layer in range(tiny.n_layers):
        x = resid[:, layer].float()
        hand = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
                * norm.weight) @ hf.lm_head.weight.T
        torch.testing.assert_close(unembed(hf, x), hand, rtol=1e-4, atol=1e-4)
    # the last layer's lens is the model's own next-token logits
    with torch.no_grad():
        full = hf(torch.tensor([prefix + s for s in suffixes])).logits[:, -1]
    torch.testing.assert_close(unembed(hf, resid[:, -1].float()), full.float(),
                               rtol=1e-4, atol=1e-4)
