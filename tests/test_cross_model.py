import pytest

from interp.analysis.cross_model import cross_model_patch
from interp.analysis.metrics import logit_diff
from interp.analysis.pairs import task_pairs, tokenize_pairs
from interp.errors import ConfigError
from interp.models import load_model


@pytest.fixture(scope="module")
def models():
    return load_model("tiny-random-llama", seed=0), load_model("tiny-random-llama", seed=1)


def test_cross_model_heads_equal_hand_patched_runs(models):
    target, source = models
    tokens = tokenize_pairs(target, task_pairs("boolean", 4, seed=0, tokenizer=target.tokenizer))
    result = cross_model_patch(target, source, tokens, "heads")
    L, H = target.n_layers, target.n_heads
    assert result.scores.shape == (L, H, 4)
    for i, t in enumerate(tokens):
        ids = t["clean"][None]
        metric = logit_diff([t["answer_id"]], [t["foil_id"]])
        _, cache = source.bridge.run_with_cache(ids)
        assert result.clean[i].item() == pytest.approx(metric(source.bridge(ids)).item(),
                                                       abs=1e-5)
        assert result.corrupt[i].item() == pytest.approx(metric(target.bridge(ids)).item(),
                                                         abs=1e-5)
        for layer, head in [(0, 1), (L - 1, H - 1)]:
            name = f"blocks.{layer}.attn.hook_z"

            def patch(z, hook=None):
                z = z.clone()
                z[:, :, head] = cache[name][:, :, head]
                return z
            ref = metric(target.bridge.run_with_hooks(ids, fwd_hooks=[(name, patch)]))
            assert result.scores[layer, head, i].item() == pytest.approx(ref.item(), abs=1e-5)
    # position components: aligned on the final token
    resid = cross_model_patch(target, source, tokens, "resid")
    assert resid.positions[-1] == -1
    for i, t in enumerate(tokens):
        ids = t["clean"][None]
        metric = logit_diff([t["answer_id"]], [t["foil_id"]])
        _, cache = source.bridge.run_with_cache(ids)

        def last(act, hook=None):
            act = act.clone()
            act[:, -1] = cache["blocks.1.hook_resid_pre"][:, -1]
            return act
        ref = metric(target.bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_pre",
                                                                   last)]))
        assert resid.scores[1, -1, i].item() == pytest.approx(ref.item(), abs=1e-5)


def test_cross_model_refuses_different_shapes(models):
    target, _ = models
    other = load_model("tiny-random-llama")
    other.hf.config.num_hidden_layers = 2   # pretend another architecture
    with pytest.raises(ConfigError, match="differ in shape"):
        cross_model_patch(target, other, [], "heads")
