import pytest
import torch

from interp.analysis.attribution import direct_logit_attribution
from interp.analysis.patching import ablate
from interp.analysis.results import PatchResult
from interp.errors import ConfigError
from interp.models import load_model
from interp.stats import bootstrap_ci

TEXTS = ["The cat sat on the mat and", "One two three four five six seven"]


@pytest.fixture(scope="module")
def tiny():
    model = load_model("tiny-random-llama", device="cpu")
    tokens = torch.tensor([model.tokenizer(t).input_ids for t in TEXTS])
    return model, tokens


def test_direct_logit_attribution_decomposes_the_logit_difference(tiny):
    model, tokens = tiny
    dla = direct_logit_attribution(model, tokens, [5, 9], [7, 11])
    assert dla["heads"].shape == (model.n_layers, model.n_heads, 2)
    with torch.no_grad():
        logits = model.bridge(tokens)[:, -1]
    total = torch.stack([logits[0, 5] - logits[0, 7], logits[1, 9] - logits[1, 11]])
    assert torch.allclose(dla["total"], total, atol=1e-5)
    parts = dla["heads"].sum((0, 1)) + dla["mlp"].sum(0) + dla["embed"]
    assert torch.allclose(parts, total, atol=1e-4)        # no biases in this model
    assert (dla["bias"] == 0).all() and (dla["final_bias"] == 0).all()
    assert dla["rest"].abs().max() < 1e-4
    assert dla["heads"].abs().max() > 1e-3


def _ablated_by_hand(model, tokens, layer, head, value):
    def hook(z, hook=None):
        z = z.clone()
        z[:, :, head] = value[:, :, head] if torch.is_tensor(value) else 0.0
        return z
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(
            tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
    return logits[:, -1, 5] - logits[:, -1, 7]


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_head_ablation_equals_single_hooked_runs(tiny, mode):
    model, tokens = tiny

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    scores = ablate(model, tokens, metric, mode=mode, chunk=5)
    assert scores.shape == (model.n_layers, model.n_heads, 2)
    _, cache = model.bridge.run_with_cache(tokens)
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        z = cache[f"blocks.{layer}.attn.hook_z"]
        value = None if mode == "zero" else z.mean(0, keepdim=True).expand_as(z)
        ref = _ablated_by_hand(model, tokens, layer, head, value)
        assert torch.allclose(scores[layer, head], ref, atol=1e-5)
    with pytest.raises(ConfigError, match="ablation mode"):
        ablate(model, tokens, metric, mode="resample")


def test_bootstrap_interval_matches_normal_theory():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2, 400, generator=gen) + torch.tensor([[0.0], [5.0]])
    low, high = bootstrap_ci(values, n_boot=2000, seed=1)
    se = values.std(-1) / 400 ** 0.5
    width = high - low
    assert torch.allclose(width, 2 * 1.96 * se, rtol=0.15)
    assert bool(((low < values.mean(-1)) & (values.mean(-1) < high)).all())
    same, again = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert torch.equal(same[0], again[0])
    const_low, const_high = bootstrap_ci(torch.full((1, 10), 2.5))
    assert float(const_low) == pytest.approx(2.5) and float(const_high) == pytest.approx(2.5)


def test_patch_result_normalized_and_intervals():
    scores = torch.tensor([[[1.0, 3.0, 2.0, 2.0]]])        # one component, four pairs
    clean, corrupt = torch.full((4,), 3.0), torch.full((4,), 1.0)
    result = PatchResult("heads", "activation", "denoise", scores, clean, corrupt)
    assert result.mean.item() == pytest.approx(2.0)
    assert result.normalized.item() == pytest.approx(0.5)   # (2 - 1) / (3 - 1)
    low, high = result.ci(normalized=True)
    assert low.item() <= 0.5 <= high.item() and low.item() >= 0.0 and high.item() <= 1.0
    saved = result.tensors(n_boot=200)
    assert set(saved) >= {"heads", "heads_normalized", "heads_ci_low", "heads_per_pair"}
    top = result.top(1).iloc[0]
    assert (top["component"], top["layer"], top["head"]) == ("L0H0", 0, 0)
    assert top.value == pytest.approx(2.0) and top.normalized == pytest.approx(0.5)


def test_attribution_components_share_one_pass(tiny):
    from interp.analysis.attribution import attribution_components, attribution_patch
    from interp.analysis.patching import run_metric

    model, tokens = tiny
    corrupt = tokens.flip(0)

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    both = attribution_components(model, tokens, corrupt, metric, ("heads", "mlp"),
                                  with_metric=True)
    for component in ("heads", "mlp"):
        single = attribution_patch(model, tokens, corrupt, metric, component)
        assert torch.allclose(both[component], single, atol=1e-6)
    assert torch.allclose(both["source"], run_metric(model, tokens, metric), atol=1e-5)
    assert torch.allclose(both["target"], run_metric(model, corrupt, metric), atol=1e-5)


def test_right_padded_rows_score_as_each_row_alone(tiny):
    """Rows of different lengths right-padded into one batch give each row's own scores: the
    metric reads every row's last real token, and the pads (whatever token fills them) add
    nothing."""
    from interp.analysis.attribution import attribution_components

    model, tokens = tiny
    gen = torch.Generator().manual_seed(3)
    vocab = model.hf.config.vocab_size
    prefix = tokens[0, :3].tolist()            # a shared prefix, as an ICL prompt has
    rows = [prefix + torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (4, 7, 5)]
    corrupt_rows = [r[:3] + [(t + 1) % vocab for t in r[3:]] for r in rows]
    answer, foil = [5, 9, 2], [7, 3, 4]
    width = max(map(len, rows))

    def padded(rs, fill):
        return torch.tensor([r + [fill] * (width - len(r)) for r in rs])

    def metric_for(idx):
        def metric(logits):
            last = logits[:, -1]
            return last[torch.arange(len(idx)), [answer[i] for i in idx]] - \
                last[torch.arange(len(idx)), [foil[i] for i in idx]]
        return metric

    lengths = [len(r) for r in rows]
    batched = [attribution_components(model, padded(rows, fill), padded(corrupt_rows, fill),
                                      metric_for([0, 1, 2]), ("heads", "mlp"),
                                      with_metric=True, lengths=lengths) for fill in (0, 11)]
    for i, (r, c) in enumerate(zip(rows, corrupt_rows)):
        alone = attribution_components(model, torch.tensor([r]), torch.tensor([c]),
                                       metric_for([i]), ("heads", "mlp"), with_metric=True)
        for out in batched:
            torch.testing.assert_close(out["heads"][..., i], alone["heads"][..., 0],
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out["mlp"][:, :len(r), i], alone["mlp"][..., 0],
                                       rtol=1e-4, atol=1e-5)
            assert int(torch.count_nonzero(out["mlp"][:, len(r):, i])) == 0
            for key in ("source", "target"):
                torch.testing.assert_close(out[key][i], alone[key][0], rtol=1e-4, atol=1e-5)
    for wrong in ([4, 7], [4, 7, width + 1], [0, 7, 5]):     # one length per row, in 1..width
        with pytest.raises(ConfigError, match="lengths"):
            attribution_components(model, padded(rows, 0), padded(corrupt_rows, 0),
                                   metric_for([0, 1, 2]), ("heads",), lengths=wrong)
