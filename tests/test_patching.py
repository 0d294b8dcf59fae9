import pytest
import torch
from transformer_lens import patching as tlp

from interp.analysis.attribution import attribution_patch
from interp.analysis.metrics import first_answer_token, logit_diff, normalized_effect
from interp.analysis.pairs import patch_pairs
from interp.analysis.patching import activation_patch
from interp.models import load_model

CLEAN = ["The cat sat on the mat and", "One two three four five six seven"]
CORRUPT = ["The dog sat on the rug and", "One two three four five six ten"]


@pytest.fixture(scope="module")
def setup():
    model = load_model("tiny-random-llama", device="cpu")
    tok = model.tokenizer
    clean = torch.tensor([tok(t).input_ids for t in CLEAN])
    corrupt = torch.tensor([tok(t).input_ids for t in CORRUPT])
    metric = logit_diff([first_answer_token(tok, " a")] * 2, [first_answer_token(tok, " the")] * 2)
    return model, clean, corrupt, metric


@pytest.mark.parametrize("component,reference", [
    ("heads", tlp.get_act_patch_attn_head_out_all_pos),
    ("heads_pos", tlp.get_act_patch_attn_head_out_by_pos),
    ("resid", tlp.get_act_patch_resid_pre),
    ("attn", tlp.get_act_patch_attn_out),
    ("mlp", tlp.get_act_patch_mlp_out),
])
@pytest.mark.parametrize("fast", [True, False])
def test_batched_patching_equals_transformer_lens(setup, component, reference, fast):
    model, clean, corrupt, metric = setup
    _, clean_cache = model.bridge.run_with_cache(clean)
    ref = reference(model.bridge, corrupt, clean_cache, lambda logits: metric(logits).mean())
    ours = activation_patch(model, clean, corrupt, metric, component, chunk=5, fast=fast).mean(-1)
    if component == "heads_pos":  # TL orders (layer, pos, head)
        ours = ours.permute(0, 2, 1)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4


def test_noising_is_denoising_with_roles_swapped(setup):
    model, clean, corrupt, metric = setup
    noise = activation_patch(model, clean, corrupt, metric, "heads", direction="noise")
    swapped = activation_patch(model, corrupt, clean, metric, "heads", direction="denoise")
    assert torch.allclose(noise, swapped)


def test_patching_identical_tokens_changes_nothing(setup):
    model, clean, corrupt, metric = setup
    scores = activation_patch(model, clean, corrupt, metric, "resid")
    with torch.no_grad():
        corrupt_metric = metric(model.bridge(corrupt))
    same = (clean == corrupt)  # layer-0 residual input at an identical token is identical
    for b in range(clean.shape[0]):
        for pos in range(clean.shape[1]):
            close = torch.isclose(scores[0, pos, b], corrupt_metric[b], atol=1e-5)
            assert bool(close) == bool(same[b, pos]), (b, pos)


def test_attribution_exact_where_metric_is_linear_in_component():
    """With the final norm removed, logits are linear in the last layer's head outputs and MLP
    output, so the first-order estimate must equal activation patching exactly there."""
    model = load_model("tiny-random-llama", device="cpu")
    model.hf.model.norm = torch.nn.Identity()
    tok = model.tokenizer
    clean = torch.tensor([tok(t).input_ids for t in CLEAN])
    corrupt = torch.tensor([tok(t).input_ids for t in CORRUPT])
    metric = logit_diff([first_answer_token(tok, " a")] * 2, [first_answer_token(tok, " the")] * 2)
    with torch.no_grad():
        base = metric(model.bridge(corrupt))
    last = model.n_layers - 1
    for component in ("heads", "mlp"):
        exact = activation_patch(model, clean, corrupt, metric, component) - base
        approx = attribution_patch(model, clean, corrupt, metric, component)
        assert torch.allclose(approx[last], exact[last], atol=1e-4)
        assert (approx[0] - exact[0]).abs().max() > 1e-7  # an estimate upstream, not exact


def test_patch_pairs_groups_lengths_and_keeps_order(setup):
    model, clean, corrupt, metric = setup
    tok = model.tokenizer
    a_id, f_id = first_answer_token(tok, " a"), first_answer_token(tok, " the")
    short_c, short_k = tok("The cat ran").input_ids, tok("The dog ran").input_ids
    pairs = [{"clean": clean[0], "corrupt": corrupt[0], "answer_id": a_id, "foil_id": f_id},
             {"clean": torch.tensor(short_c), "corrupt": torch.tensor(short_k),
              "answer_id": a_id, "foil_id": f_id},
             {"clean": clean[1], "corrupt": corrupt[1], "answer_id": a_id, "foil_id": f_id}]
    out = patch_pairs(model, pairs, "heads")
    full = activation_patch(model, clean, corrupt, metric, "heads")
    assert out.scores.shape == (model.n_layers, model.n_heads, 3)
    assert torch.allclose(out.scores[..., [0, 2]], full, atol=1e-5)
    assert torch.allclose(out.mean, out.scores.mean(-1))
    # position-indexed components align on the last token across lengths
    resid = patch_pairs(model, pairs, "resid")
    width = len(short_c)
    assert resid.positions == list(range(-width, 0))
    long_only = activation_patch(model, clean, corrupt, metric, "resid")[:, -width:]
    assert torch.allclose(resid.scores[..., [0, 2]], long_only, atol=1e-5)


PREFIX = "Alice and Bob went to the market to buy some fresh bread. Then"


@pytest.mark.parametrize("component,reference", [
    ("heads", tlp.get_act_patch_attn_head_out_all_pos),
    ("heads_pos", tlp.get_act_patch_attn_head_out_by_pos),
    ("resid", tlp.get_act_patch_resid_pre),
])
@pytest.mark.parametrize("fast", [True, False])
def test_shared_prefix_paths_equal_transformer_lens(setup, component, reference, fast):
    """A long common prefix is computed once and patched runs start at the hooked layer; both
    the fast and the plain path must still equal TransformerLens."""
    from interp.analysis import patching

    model, _, _, _ = setup
    tok = model.tokenizer
    clean = torch.tensor([tok(PREFIX + s).input_ids for s in (" Alice said", " Bob said")])
    corrupt = torch.tensor([tok(PREFIX + s).input_ids for s in (" Carol said", " Dave said")])
    assert clean.shape == corrupt.shape and patching.first_difference(clean, corrupt) > 10
    metric = logit_diff([first_answer_token(tok, " a")] * 2, [first_answer_token(tok, " the")] * 2)
    _, clean_cache = model.bridge.run_with_cache(clean)
    ref = reference(model.bridge, corrupt, clean_cache, lambda logits: metric(logits).mean())
    ours = activation_patch(model, clean, corrupt, metric, component, chunk=7,
                            fast=fast).mean(-1)
    if component == "heads_pos":
        ours = ours.permute(0, 2, 1)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_normalized_effect_hand_values():
    eff = normalized_effect(torch.tensor([1.0, 3.0, 2.0]), torch.tensor(3.0), torch.tensor(1.0))
    assert torch.allclose(eff, torch.tensor([0.0, 1.0, 0.5]))


def test_first_answer_token_skips_lone_space(smol):
    tok = smol.tokenizer
    assert tok.decode([first_answer_token(tok, " 8")]) == "8"
    assert tok.decode([first_answer_token(tok, " True")]).strip() == "True"


@pytest.mark.parametrize("task", ["boolean", "relation", "parity", "expression", "code"])
def test_task_pairs_flip_the_answer_at_equal_length(setup, task):
    from interp.analysis.pairs import task_pairs, tokenize_pairs
    from interp.prompts import choose_demos

    model = setup[0]
    demos = choose_demos(task, 2)
    pairs = task_pairs(task, 6, demos=demos, tokenizer=model.tokenizer)
    tokens = tokenize_pairs(model, pairs)
    prefix = pairs[0]["clean"][: pairs[0]["clean"].index(demos[-1].input)]
    for p, t in zip(pairs, tokens):
        assert p["answer"] != p["foil"] and t["answer_id"] != t["foil_id"]
        assert t["clean"].shape == t["corrupt"].shape and not torch.equal(t["clean"], t["corrupt"])
        assert p["clean"].startswith(prefix) and p["corrupt"].startswith(prefix)


def test_span_chunk_keeps_a_chunk_within_a_third_of_the_layers():
    from interp.analysis.patching import span_chunk

    assert span_chunk(256, 270, 30) == 90          # 1 pair on SmolLM2: 10 layers of heads
    assert span_chunk(16, 270, 30) == 16           # the memory cap is already tighter
    assert span_chunk(256, 30, 30) == 10           # MLPs: one per layer
    assert span_chunk(256, 8, 2) == 4              # two layers: one layer per chunk
    assert span_chunk(0, 8, 2) == 1
