"""Architecture coverage: for every supported model type, a seeded random tiny model directory
(hidden 64, 2 layers, the embedded tokenizer) must give TransformerLens's patching results
through `interp patch`, finite attribution scores, a direct logit attribution whose parts sum to
the logit difference, and a fast path equal to the plain one."""

import json
import subprocess
import sys

import pytest
import torch
from archs import ARCHS, tiny_model_dir
from safetensors.torch import load_file
from transformer_lens import patching as tlp

from interp.analysis.attribution import attribution_components, direct_logit_attribution
from interp.analysis.metrics import logit_diff
from interp.analysis.pairs import tokenize_pairs
from interp.analysis.patching import activation_patch
from interp.arch import ADAPTERS, adapter, b_o, head_writes, kv_parameters, w_o
from interp.errors import UnsupportedError
from interp.finetune import layer_causal_loss
from interp.models import load_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: tiny_model_dir(arch, root) for arch in ARCHS}


def _independent_bridge(path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path)
    return TransformerBridge.boot_transformers(str(path), hf_model=hf, tokenizer=tok,
                                               device="cpu")


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_patch_equals_transformer_lens(arch, model_dirs, tmp_path):
    path = model_dirs[arch]
    out = tmp_path / "patch"
    done = subprocess.run([sys.executable, "-m", "interp", "--quiet", "patch", "--model",
                           str(path), "--task", "boolean", "--n", "3", "--method", "activation",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ours = load_file(out / "scores.safetensors")["heads_per_pair"]
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    bridge = _independent_bridge(path)
    model = load_model(str(path), device="cpu")
    tokens = tokenize_pairs(model, pairs)
    for i, p in enumerate(tokens):
        _, clean_cache = bridge.run_with_cache(p["clean"][None])
        metric = logit_diff([p["answer_id"]], [p["foil_id"]])
        ref = tlp.get_act_patch_attn_head_out_all_pos(bridge, p["corrupt"][None], clean_cache,
                                                      lambda logits: metric(logits).mean())
        assert ref.abs().max() > 1e-3          # the random model is not trivially flat
        assert (ours[..., i] - ref).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def loaded(model_dirs):
    out = {}
    for arch, path in model_dirs.items():
        model = load_model(str(path), device="cpu")
        tok = model.tokenizer
        clean = torch.tensor([tok("The cat sat on the mat and").input_ids])
        corrupt = torch.tensor([tok("The dog sat on the rug and").input_ids])
        a, f = tok(" a").input_ids[-1], tok(" the").input_ids[-1]
        out[arch] = (model, clean, corrupt, a, f)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_equals_plain_path(arch, loaded):
    model, clean, corrupt, a, f = loaded[arch]
    metric = logit_diff([a], [f])
    for component in ("heads", "resid", "mlp"):
        fast = activation_patch(model, clean, corrupt, metric, component, fast=True)
        plain = activation_patch(model, clean, corrupt, metric, component, fast=False)
        assert (fast - plain).abs().max() <= 1e-4, component


@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_is_finite_and_close_to_patching_where_linear(arch, loaded):
    model, clean, corrupt, a, f = loaded[arch]
    metric = logit_diff([a], [f])
    scores = attribution_components(model, clean, corrupt, metric, ("heads", "mlp", "resid"))
    for name, value in scores.items():
        assert torch.isfinite(value).all(), name
        assert value.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_dla_parts_sum_to_the_logit_difference(arch, loaded):
    model, clean, _, a, f = loaded[arch]
    parts = direct_logit_attribution(model, clean, [a], [f])
    total = (parts["heads"].sum((0, 1)) + parts["mlp"].sum(0) + parts["embed"] + parts["bias"]
             + parts["final_bias"])
    assert torch.allclose(total, parts["total"], atol=1e-4), (total, parts["total"])
    assert parts["heads"].abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_head_writes_sum_to_the_attention_output(arch, loaded):
    """The per-head slicing of the output projection (and Gemma's post-attention norm) that DLA
    and function vectors use reproduces what attention adds to the residual stream."""
    model, clean, _, _, _ = loaded[arch]
    _, cache = model.bridge.run_with_cache(clean)
    for layer in range(model.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][0].float()
        raw = torch.einsum("the,dhe->td", z, w_o(model.hf, layer).float())
        bias = b_o(model.hf, layer)
        if bias is not None:
            raw = raw + bias.float()
        writes = head_writes(model.hf, layer, z, attn_out=raw)
        added = writes.sum(-2)
        if bias is not None:
            norm = adapter(model.hf).post_attn_norm
            added = added + (bias.float() if norm is None else 0)
        target = cache[f"blocks.{layer}.hook_attn_out"][0].float()
        assert torch.allclose(added, target, atol=1e-4), layer


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_causal_loss_runs_or_refuses_in_one_line(arch, loaded):
    model, clean, _, _, _ = loaded[arch]
    loss = layer_causal_loss(model.hf, clean)       # the generic forward runs everywhere
    assert torch.isfinite(loss)
    if ADAPTERS[arch].supports("gd_kv"):
        assert kv_parameters(model.hf)
    else:
        with pytest.raises(UnsupportedError, match=f"{arch}.*gd kv"):
            kv_parameters(model.hf)


def test_unsupported_capability_is_one_line(loaded):
    from interp.analysis.edges import split_forward

    model, clean, _, _, _ = loaded["gpt2"]
    with pytest.raises(UnsupportedError) as info:
        split_forward(model, clean)
    assert "gpt2" in str(info.value) and "edges" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_model_type_is_refused():
    from types import SimpleNamespace

    with pytest.raises(UnsupportedError, match="no architecture adapter"):
        adapter(SimpleNamespace(config=SimpleNamespace(model_type="mamba")))
