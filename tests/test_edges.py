"""Edge attribution on grouped-query attention (the tiny model has 4 query heads in 2 KV groups)."""

import copy

import pytest
import torch

from interp.analysis.edges import (
    EDGE_INPUTS,
    edge_attribution,
    edge_faithfulness,
    patch_edges,
    split_forward,
)
from interp.analysis.metrics import logit_diff
from interp.analysis.pairs import task_pairs, tokenize_pairs
from interp.engine import length_groups
from interp.errors import ConfigError, UnsupportedError
from interp.models import load_model


@pytest.fixture(scope="module")
def setup():
    model = load_model("tiny-random-llama")
    assert model.n_kv_heads < model.n_heads
    tokens = tokenize_pairs(model, task_pairs("boolean", 4, seed=0, tokenizer=model.tokenizer))
    idx = max(length_groups(tokens).values(), key=len)
    clean = torch.stack([tokens[i]["clean"] for i in idx])
    corrupt = torch.stack([tokens[i]["corrupt"] for i in idx])
    metric = logit_diff([tokens[i]["answer_id"] for i in idx],
                        [tokens[i]["foil_id"] for i in idx])
    return model, clean, corrupt, metric


def _mha_copy(model):
    """The same function with one KV head per query head (K/V weights repeated per group)."""
    from transformers import AutoModelForCausalLM

    H, G, dh = model.n_heads, model.n_kv_heads, model.d_head
    config = copy.deepcopy(model.hf.config)
    config.num_key_value_heads = H
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    fresh = load_model(model.spec)          # the same seeded weights, never bridged
    state = {k: v.clone() for k, v in fresh.hf.state_dict().items()}
    for name in list(state):
        if "k_proj.weight" in name or "v_proj.weight" in name:
            w = state[name]
            state[name] = w.view(G, dh, -1).repeat_interleave(H // G, 0).reshape(H * dh, -1)
    hf.load_state_dict(state)
    return hf.eval()


def _head_write(model, ids, layer, head):
    """A head's write into the residual stream, from the bridge's hook_z and o_proj."""
    _, cache = model.bridge.run_with_cache(ids)
    z = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
    dh = model.d_head
    wo = dict(model.hf.named_parameters())
    wo = next(p for n, p in wo.items() if f"layers.{layer}." in n and "o_proj" in n
              and n.endswith("weight"))
    return z @ wo[:, head * dh:(head + 1) * dh].T


def test_split_forward_is_the_model(setup):
    model, clean, corrupt, _ = setup
    logits, senders = split_forward(model, corrupt)
    with torch.no_grad():
        ref = model.hf(input_ids=corrupt).logits
    torch.testing.assert_close(logits.detach(), ref, atol=1e-5, rtol=1e-4)
    assert senders["heads"].shape == (model.n_layers, *corrupt.shape, model.n_heads,
                                      model.d_model)


@pytest.mark.parametrize("kind", ["k", "v", "q"])
def test_single_edge_patch_matches_an_independent_mha_reference(setup, kind):
    """Patching the edge L0H1 -> L1H1.<kind> (head 1 shares its KV group with head 0) by hand on
    an equivalent multi-head model: only head 1's copy of the projection sees the patched input."""
    model, clean, corrupt, metric = setup
    H, dh = model.n_heads, model.d_head
    sender, recv_layer, recv_head = (0, 1), 1, 1
    delta = (_head_write(model, clean, *sender) - _head_write(model, corrupt, *sender)).detach()
    mha = _mha_copy(model)
    layer = mha.model.layers[recv_layer]
    seen = {}
    h1 = layer.input_layernorm.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    proj = getattr(layer.self_attn, f"{kind}_proj")

    def replace(module, args, out):
        out = out.clone()
        w = module.weight[recv_head * dh:(recv_head + 1) * dh]
        out[..., recv_head * dh:(recv_head + 1) * dh] = layer.input_layernorm(
            seen["x"] + delta) @ w.T
        return out
    h2 = proj.register_forward_hook(replace)
    with torch.no_grad():
        ref = metric(mha(input_ids=corrupt).logits)
    h1.remove()
    h2.remove()
    s = 1 + sender[0] * H + sender[1]
    ours = patch_edges(model, clean, corrupt, metric,
                       [("heads", recv_layer, recv_head, EDGE_INPUTS.index(kind), s)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    # and the group partner's keys/values were left alone: patching head 0's edge differs
    other = patch_edges(model, clean, corrupt, metric,
                        [("heads", recv_layer, 0, EDGE_INPUTS.index(kind), s)])
    with torch.no_grad():
        unpatched = metric(split_forward(model, corrupt)[0])
    assert (ours - unpatched).abs().max() > 1e-6       # the edge does something
    assert not torch.equal(other, ours)


def test_attribution_is_the_derivative_of_exact_edge_patching(setup):
    """EAP score = d/d(scale) of the exact single-edge patch at scale 0 (central difference)."""
    model, clean, corrupt, metric = setup
    scores = edge_attribution(model, clean, corrupt, metric)
    ranked = scores.ranked()
    checked = 0
    for edge in ranked[:12] + ranked[40:44]:
        eps = 1e-2   # float32: a smaller step drowns the difference in rounding
        plus = patch_edges(model, clean, corrupt, metric, [edge["index"]], eps)
        minus = patch_edges(model, clean, corrupt, metric, [edge["index"]], -eps)
        fd = float(((plus - minus) / (2 * eps)).mean())
        assert edge["score"] == pytest.approx(fd, rel=0.05, abs=2e-5), edge
        checked += abs(edge["score"]) > 1e-4
    assert checked >= 8
    kinds = {e["receiver"].split(".")[-1] for e in ranked[:60]}
    assert {"k", "v"} & kinds               # edges into keys/values of GQA heads are scored
    # senders downstream of a receiver get no score
    valid = scores.valid()
    assert not scores.heads[0][..., ~valid["heads"][0], :].any()


def test_faithfulness_curve_and_refusals(setup):
    model, clean, corrupt, metric = setup
    scores = edge_attribution(model, clean, corrupt, metric)
    all_edges = [r["index"] for r in scores.ranked()]
    curve = edge_faithfulness(model, clean, corrupt, metric, scores, sizes=(1, 10, len(all_edges)))
    assert curve["sizes"] == [1, 10, len(all_edges)] and len(curve["recovered"]) == 3
    with pytest.raises(ConfigError):
        edge_attribution(model, clean, corrupt[:, :-1], metric)
    other = load_model("tiny-random-llama")
    other.hf.config.model_type = "gemma3"
    with pytest.raises(UnsupportedError, match="'gemma3_text' does not support edges"):
        split_forward(other, corrupt)
