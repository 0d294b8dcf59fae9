import pytest
import torch

from interp.analysis.icl_heads import find_icl_heads, function_vector, icl_prompts, inject
from interp.analysis.metrics import answer_prob, first_answer_token
from interp.errors import ConfigError
from interp.models import load_model
from interp.prompts import answer_sep


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random-llama")


def test_shuffled_prompts_differ_only_in_labels():
    clean, shuffled, queries, demos = icl_prompts("boolean", 4, shots=4, seed=0)
    assert len(demos) == 4
    assert len(clean) == len(shuffled) == len(queries) == 4
    for c, s, q in zip(clean, shuffled, queries):
        assert c != s and c.endswith(q.input) and s.endswith(q.input)
        strip = lambda t: t.replace("True", "X").replace("False", "X")  # noqa: E731
        assert strip(c) == strip(s)
    with pytest.raises(ConfigError):
        icl_prompts("expression", 2, shots=4)
    with pytest.raises(ConfigError):
        icl_prompts("boolean", 2, shots=1)


def test_indirect_effects_equal_hand_patched_runs(model):
    """Each head's patched P(correct) equals a run with that head's last-token z overwritten by
    its mean over the clean prompts, computed here with plain hooks."""
    n, shots = 3, 2
    result = find_icl_heads(model, "boolean", n=n, shots=shots, seed=1)
    bridge, tok = model.bridge, model.tokenizer
    clean, shuffled, queries, _ = icl_prompts("boolean", n, shots, seed=1)
    answers = [first_answer_token(tok, answer_sep("boolean") + q.target) for q in queries]
    zs = []
    for text in clean:
        _, cache = bridge.run_with_cache(bridge.to_tokens(text))
        zs.append(torch.stack([cache[f"blocks.{l}.attn.hook_z"][0, -1]
                               for l in range(model.n_layers)]))
    mean_z = torch.stack(zs).mean(0)
    torch.testing.assert_close(result.mean_z, mean_z, atol=1e-5, rtol=1e-4)
    for layer, head in [(0, 0), (1, 3), (model.n_layers - 1, model.n_heads - 1)]:
        for i, text in enumerate(shuffled):
            def patch(z, hook=None):
                z = z.clone()
                z[:, -1, head] = mean_z[layer, head]
                return z
            logits = bridge.run_with_hooks(bridge.to_tokens(text),
                                           fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
            ref = answer_prob([answers[i]])(logits)[0]
            assert result.per_prompt[layer, head, i].item() == pytest.approx(ref.item(), abs=1e-5)
        base = answer_prob([answers[i]])(bridge(bridge.to_tokens(text)))[0]
        assert result.shuffled[i].item() == pytest.approx(base.item(), abs=1e-5)
    assert result.aie.shape == (model.n_layers, model.n_heads)
    top = result.top_heads(3)
    assert result.aie[top[0]].abs() == result.aie.abs().max()
    frame = result.top(3)             # the result contract: largest |AIE| first
    assert frame.iloc[0]["component"] == f"L{top[0][0]}H{top[0][1]}"


def test_function_vector_is_the_heads_residual_write(model):
    """The o_proj slicing matches the model: summing every head's write gives hook_attn_out."""
    from interp.analysis.icl_heads import ICLHeads

    bridge = model.bridge
    _, cache = bridge.run_with_cache(bridge.to_tokens("True and False or True ="))
    L, H = model.n_layers, model.n_heads
    z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][0, -1] for l in range(L)])
    aie = torch.zeros(L, H)
    aie[1] = 1.0  # top-H heads = all heads of layer 1
    heads = ICLHeads(aie, torch.zeros(L, H, 1), torch.zeros(1), torch.zeros(1), z)
    fv = function_vector(model, heads, k=H)
    torch.testing.assert_close(fv, cache["blocks.1.hook_attn_out"][0, -1], atol=1e-5, rtol=1e-4)
    out = inject(model, "boolean", fv, n=6)
    assert out["layer"] == L // 3 and 0 <= out["zero_shot"] <= 1
    none = inject(model, "boolean", torch.zeros_like(fv), n=6)
    assert none["with_function_vector"] == none["zero_shot"]
