"""One adapter per model family: where its parts live and what it supports.

Everything that needs more than TransformerLens hook names reads from here: the fast patching
path (running only the layers after the first patched one), layer-causal GD (which detaches
every layer's input and unembeds every layer's output), per-head direct logit attribution and
function vectors (each head's slice of the output projection, through Gemma's post-attention
norm), LoRA targets, and edge attribution. Paths are the Hugging Face parameter/module names,
which stay valid after a TransformerBridge wraps the model (``_original_component`` hops are
resolved by :func:`resolve`).

An operation a model type cannot do raises :class:`~interp.errors.UnsupportedError` with one
line naming the model type and the capability.

If you add a model type: one :class:`Adapter` entry in this file (its module paths and
capabilities; ``SUPPORTED`` is derived from the entries), and a seeded tiny config in
``tests/archs.py`` (the architecture tests then cover it against TransformerLens). Edge
attribution's forward (:func:`receiver_forward`) reads the adapter's paths; an architecture
whose attention is not Llama's (rotary, separate q/k/v) leaves out the ``edges`` capability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from interp.errors import UnsupportedError

#: every capability an adapter can declare
CAPABILITIES = ("patching", "attribution", "layer_skip", "dla", "gd_kv", "edges", "lora")


@dataclass(frozen=True)
class Adapter:
    model_type: str
    layers: str                      # the decoder layers (a ModuleList)
    final_norm: str                  # the norm before the unembedding
    o_proj: str                      # per layer: the attention output projection
    o_proj_conv1d: bool = False      # GPT-2's Conv1D stores weights as [in, out]
    q_proj: str | None = None        # per layer: separate query / key / value projections
    k_proj: str | None = None        # (None: fused into one matrix)
    v_proj: str | None = None
    q_norm: str | None = None        # per layer: per-head RMSNorm of queries / keys (Qwen3)
    k_norm: str | None = None
    post_attn_norm: str | None = None   # Gemma: norm applied to the attention output
    #: the residual stream split per receiver (edge attribution, :func:`receiver_forward`):
    #: embeddings and rotary embedding (model paths), per layer the attention module, the norm
    #: before it, the MLP and the norm before that
    embed: str | None = None
    rotary: str | None = None
    attention: str | None = None
    attn_norm: str | None = None
    mlp: str | None = None
    mlp_norm: str | None = None
    norm_offset: float = 0.0            # Gemma's RMSNorm multiplies by (offset + weight)
    lora_targets: tuple[str, ...] = ()
    capabilities: frozenset = frozenset(CAPABILITIES)
    notes: str = ""

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, why: str = "") -> None:
        if capability not in self.capabilities:
            reason = why or self.notes or "not implemented for this architecture"
            raise UnsupportedError(f"model type {self.model_type!r} does not support "
                                   f"{capability.replace('_', ' ')}: {reason}")


_LLAMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ALL = frozenset(CAPABILITIES)


def _llama_like(model_type: str, **kw) -> Adapter:
    base = dict(model_type=model_type, layers="model.layers", final_norm="model.norm",
                o_proj="self_attn.o_proj", q_proj="self_attn.q_proj", k_proj="self_attn.k_proj",
                v_proj="self_attn.v_proj", embed="model.embed_tokens",
                rotary="model.rotary_emb", attention="self_attn", attn_norm="input_layernorm",
                mlp="mlp", mlp_norm="post_attention_layernorm",
                lora_targets=_LLAMA_LORA, capabilities=_ALL)
    base.update(kw)
    return Adapter(**base)


ADAPTERS: dict[str, Adapter] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
    "gemma3_text": _llama_like(
        "gemma3_text", post_attn_norm="post_attention_layernorm", norm_offset=1.0,
        capabilities=_ALL - {"edges"},
        notes="edge attribution needs a residual stream split per receiver, which is written for "
              "Llama-style decoders (Llama, Mistral, Qwen2, Qwen3) only"),
    "gpt2": Adapter(
        "gpt2", layers="transformer.h", final_norm="transformer.ln_f", o_proj="attn.c_proj",
        o_proj_conv1d=True, lora_targets=("c_attn", "c_proj", "c_fc"),
        capabilities=_ALL - {"gd_kv", "edges"},
        notes="its query, key and value projections are one fused matrix (c_attn), so key/value "
              "weights cannot be trained alone, and edge attribution is written for Llama-style "
              "decoders only"),
    "gpt_neox": Adapter(
        "gpt_neox", layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
        o_proj="attention.dense",
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        capabilities=_ALL - {"gd_kv", "edges"},
        notes="its query, key and value projections are one fused matrix (query_key_value), so "
              "key/value weights cannot be trained alone, and edge attribution is written for "
              "Llama-style decoders only"),
}
ADAPTERS["gemma3"] = ADAPTERS["gemma3_text"]
SUPPORTED = tuple(sorted(ADAPTERS))


def model_type(hf) -> str:
    config = getattr(hf, "config", hf)
    return getattr(config, "model_type", "unknown")


def adapter(hf) -> Adapter:
    """The adapter of a Hugging Face model (or config); UnsupportedError for unknown types."""
    kind = model_type(hf)
    if kind not in ADAPTERS:
        raise UnsupportedError(f"model type {kind!r} has no architecture adapter; supported: "
                               f"{', '.join(SUPPORTED)}")
    return ADAPTERS[kind]


def unwrap(module):
    """The Hugging Face module inside a TransformerBridge wrapper (or the module itself)."""
    while hasattr(module, "original_component"):
        module = module.original_component
    return module


def resolve(root, path: str):
    """``root.<path>`` with bridge wrappers skipped at every hop."""
    obj = unwrap(root)
    for part in path.split("."):
        obj = unwrap(getattr(obj, part))
    return obj


def layers(hf) -> torch.nn.ModuleList:
    """The decoder layers as the model's own forward iterates them (bridge-wrapped or not)."""
    obj = hf
    *head, last = adapter(hf).layers.split(".")
    for part in head:
        obj = unwrap(getattr(obj, part))
    return getattr(obj, last)


def layer_module(hf, layer: int, path: str):
    return resolve(layers(hf)[layer], path)


def w_o(hf, layer: int) -> torch.Tensor:
    """Layer ``layer``'s attention output projection as ``[d_model, n_heads, d_head]``."""
    return _layer_w_o(layers(hf)[layer], adapter(hf), hf.config.num_attention_heads)


def b_o(hf, layer: int) -> torch.Tensor | None:
    proj = layer_module(hf, layer, adapter(hf).o_proj)
    return getattr(proj, "bias", None)


def rms_gain(norm, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The per-element factor an RMSNorm applies to ``x``, so that ``norm(x) = x * gain``
    (frozen at ``x``: multiplying any part of ``x`` by it is the norm's linear part)."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    xf = x.float()
    scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return scale * (offset + norm.weight.float())


def head_writes(hf, layer: int, z: torch.Tensor, attn_out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Each head's write into the residual stream from its ``z`` ``[..., n_heads, d_head]``:
    ``[..., n_heads, d_model]``, excluding the projection bias. Through a post-attention norm
    (Gemma) its gain is frozen at the layer's total attention output ``attn_out`` (the
    projection's output, ``[..., d_model]``), so the writes sum to what the layer adds."""
    a = adapter(hf)
    w = w_o(hf, layer).to(z.dtype)
    writes = torch.einsum("...he,dhe->...hd", z, w)
    if a.post_attn_norm is not None:
        if attn_out is None:
            attn_out = writes.sum(-2)
        norm = layer_module(hf, layer, a.post_attn_norm)
        writes = writes * rms_gain(norm, attn_out, a.norm_offset).unsqueeze(-2).to(writes.dtype)
    return writes


def kv_parameters(hf) -> list[tuple[str, torch.nn.Parameter]]:
    """The attention key and value projection parameters (weights and biases)."""
    a = adapter(hf)
    a.require("gd_kv")
    names = (a.k_proj.rsplit(".", 1)[-1], a.v_proj.rsplit(".", 1)[-1])
    found = [(n, p) for n, p in hf.named_parameters() if any(f".{m}." in n for m in names)]
    if not found:
        raise UnsupportedError(f"model type {a.model_type!r} has no {' / '.join(names)} "
                               "parameters")
    return found


def final_norm(hf):
    return resolve(hf, adapter(hf).final_norm)


def unembed(hf, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final-layer hidden states: the final norm, the unembedding and (Gemma 2)
    the final soft-capping, as the model's own head applies them."""
    return head_logits(hf, final_norm(hf)(hidden))


def head_logits(hf, normed: torch.Tensor) -> torch.Tensor:
    """Logits from hidden states the final norm has already been applied to: the unembedding
    and (Gemma 2) the final soft-capping."""
    logits = hf.get_output_embeddings()(normed)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def plain_name(name: str) -> str:
    """A parameter name as the HF model had it before a TransformerBridge wrapped its modules."""
    return name.replace("_original_component.", "")


def _cache_under_old_name(module, args, kwargs):
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


def pass_cache_to_bridge(hf) -> None:
    """Let a bridged model's attention read the KV cache under either keyword.

    transformers 5.24 renamed the decoder layers' ``past_key_values`` argument to ``cache``;
    TransformerLens 4.3's attention bridges read only the old name, so a forward continued from
    a prefix cache silently attended to the new tokens alone. A forward pre-hook on each bridged
    attention module (public torch API) passes the cache under the old name as well; with
    transformers < 5.24 there is no ``cache`` keyword and it does nothing."""
    attention = adapter(hf).o_proj.rsplit(".", 1)[0]
    for layer in layers(hf):
        module = getattr(unwrap(layer), attention)
        if not getattr(module, "_interp_cache_alias", False):
            module.register_forward_pre_hook(_cache_under_old_name, with_kwargs=True)
            module._interp_cache_alias = True


def _projection(layer, path: str, n_out: int, d_head: int, group=None):
    """A q/k/v projection per head: weight ``[heads, d_head, d]`` and bias ``[heads, d_head]``
    (key/value groups expanded to their query heads by ``group``)."""
    proj = resolve(layer, path)
    w = proj.weight.view(n_out, d_head, -1)
    b = proj.bias.view(n_out, d_head) if proj.bias is not None else None
    if group is not None:
        w, b = w[group], (b[group] if b is not None else None)
    return w, b


def _attention_writes(hf, a: Adapter, layer, x, deltas, l: int, cos, sin, mask):
    """Each head's write ``[B, T, H, d]`` from its own copies of the residual stream."""
    c = hf.config
    H, G = c.num_attention_heads, c.num_key_value_heads
    dh = getattr(c, "head_dim", None) or c.hidden_size // H
    B, T, d = x.shape
    group = torch.arange(H, device=x.device) // (H // G)     # query head -> its KV group
    per_head = {}
    for kind, path, norm in (("q", a.q_proj, a.q_norm), ("k", a.k_proj, a.k_norm),
                             ("v", a.v_proj, None)):
        xin = x[:, :, None, :].expand(B, T, H, d)
        if deltas is not None and kind in deltas:
            xin = xin + deltas[kind][l]
        w, b = _projection(layer, path, H if kind == "q" else G, dh,
                           None if kind == "q" else group)
        out = torch.einsum("bthd,hed->bhte", resolve(layer, a.attn_norm)(xin), w)
        out = out + b[None, :, None] if b is not None else out
        per_head[kind] = resolve(layer, norm)(out) if norm else out    # Qwen3 q/k norms
    q, k = apply_rotary_pos_emb(per_head["q"], per_head["k"], cos, sin)
    scores = q @ k.transpose(-1, -2) * resolve(layer, a.attention).scaling + mask
    z = torch.softmax(scores.float(), -1).to(q.dtype) @ per_head["v"]      # [B, H, T, dh]
    return torch.einsum("bhte,dhe->bthd", z, _layer_w_o(layer, a, H))


def _layer_w_o(layer, a: Adapter, n_heads: int) -> torch.Tensor:
    w = resolve(layer, a.o_proj).weight
    w = w.T if a.o_proj_conv1d else w                        # [d_model, n_heads * d_head]
    return w.reshape(w.shape[0], n_heads, -1)


def receiver_forward(hf, ids: torch.Tensor, deltas: dict | None = None):
    """A forward in which every receiver reads its own copy of the residual stream: each query
    head's query, key and value inputs (key/value groups expanded per query head), each MLP's
    input and the unembedding's. ``deltas`` (optional) are added to those copies: ``q``, ``k``,
    ``v`` ``[L, B, T, H, d]``, ``mlp [L, B, T, d]``, ``out [B, T, d]``. Returns the logits
    ``[B, T, V]`` and the senders' outputs: ``embed [B, T, d]``, ``heads [L, B, T, H, d]``,
    ``mlp [L, B, T, d]``."""
    a = adapter(hf)
    a.require("edges")
    T = ids.shape[1]
    x = resolve(hf, a.embed)(ids)
    senders = {"embed": x, "heads": [], "mlp": []}
    cos, sin = resolve(hf, a.rotary)(x, position_ids=torch.arange(T, device=ids.device)[None])
    mask = torch.full((T, T), float("-inf"), device=ids.device).triu(1)
    for l, layer in enumerate(layers(hf)):
        writes = _attention_writes(hf, a, layer, x, deltas, l, cos, sin, mask)
        senders["heads"].append(writes)
        bias = resolve(layer, a.o_proj).bias
        x = x + writes.sum(2) + (bias if bias is not None else 0)
        xin = x + deltas["mlp"][l] if deltas is not None and "mlp" in deltas else x
        mlp_out = resolve(layer, a.mlp)(resolve(layer, a.mlp_norm)(xin))
        senders["mlp"].append(mlp_out)
        x = x + mlp_out
    xin = x + deltas["out"] if deltas is not None and "out" in deltas else x
    senders["heads"], senders["mlp"] = torch.stack(senders["heads"]), torch.stack(senders["mlp"])
    return unembed(hf, xin), senders
