"""Seeded random tiny models of every supported architecture (hidden 64, 2 layers, the embedded
SmolLM2 tokenizer), saved as model directories, for architecture-coverage tests."""

from pathlib import Path

import torch

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2", "gpt_neox")


def _config(arch: str, tok):
    import transformers as T

    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "llama":
        return T.LlamaConfig(**llama_like)
    if arch == "mistral":
        return T.MistralConfig(**llama_like)
    if arch == "qwen2":
        return T.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return T.Qwen3Config(head_dim=16, **llama_like)
    if arch == "gemma3_text":
        return T.Gemma3TextConfig(head_dim=16, sliding_window=16, **llama_like)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=2048, **common)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, rotary_pct=0.25, **common)
    raise ValueError(arch)


def tiny_model_dir(arch: str, root: Path, seed: int = 0) -> Path:
    """A model directory of ``arch`` with every parameter (biases and norm gains too) drawn from
    a seeded normal, so no path through the model is trivially zero or one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.models import DEFAULT_MODEL, embedded_dir

    target = Path(root) / arch
    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(embedded_dir(DEFAULT_MODEL))
    config = _config(arch, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if p.dim() == 1:   # biases, and norm gains (Gemma's norms add 1 themselves)
                    gain = name.endswith("weight") and not arch.startswith("gemma")
                    p.copy_(torch.randn_like(p) * 0.1 + (1.0 if gain else 0.0))
                else:
                    p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
    hf.save_pretrained(target)
    tok.save_pretrained(target)
    return target
