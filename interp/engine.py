"""Running a model fast and exactly: shared-prefix KV caches, one forward with optional hooks and
layer skipping, batched choice scoring and greedy generation.

Every prompt of a run shares a prefix (instruction header and demonstrations); the prefix is
computed once and reaches every row through a copy of its KV cache. :func:`forward` is the one
forward everything else uses: the model's own Hugging Face forward (so embeddings, masks,
rotary tables and soft-capping are the model's own, for every architecture), optionally under a
TransformerBridge's hooks, optionally starting at a later layer from a cached residual stream
(the layers before it are replaced, for that call, by stand-ins that return the cached stream;
a causal model computes exactly the same there), unembedding only the last position.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, nullcontext

import torch

from interp.arch import layers as decoder_layers
from interp.errors import ConfigError, ContextLengthError, EngineCheckError
from interp.models import LoadedModel
from interp.provenance import versions


def context_length(model: LoadedModel) -> int | None:
    """The longest sequence the model was built for (None when its config does not say)."""
    n = getattr(model.hf.config, "max_position_embeddings", None)
    return int(n) if n else None


def check_length(model: LoadedModel, n_tokens: int, what: str = "a prompt") -> None:
    """Inputs that do not fit are refused, never cut: one line naming the length and the
    limit."""
    limit = context_length(model)
    if limit is not None and n_tokens > limit:
        raise ContextLengthError(
            f"{what} has {n_tokens} tokens (with its demonstrations), more than the model's "
            f"context of {limit}; use fewer shots or shorter inputs")


def encode(tokenizer, text: str, first: bool) -> list[int]:
    """Token ids of ``text``; special tokens (BOS) only for the first segment of a sequence."""
    if not text:
        return list(tokenizer("", add_special_tokens=True).input_ids) if first else []
    return list(tokenizer(text, add_special_tokens=first).input_ids)


def length_groups(items: Sequence) -> dict[int, list[int]]:
    """Indices of token sequences (lists or tensors, or tokenised pairs ``{"clean": ...}``) by
    token length, so that no padding ever enters a forward."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        tokens = item["clean"] if isinstance(item, dict) else item
        n = int(tokens.shape[-1]) if isinstance(tokens, torch.Tensor) else len(tokens)
        groups.setdefault(n, []).append(i)
    return groups


def right_padded(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> torch.Tensor:
    """Token rows right-padded with ``pad_id`` to the longest: ``[batch, width]``."""
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows],
                        dtype=torch.long, device=device)


def chunks(n: int, size: int) -> Iterable[range]:
    for start in range(0, n, max(1, size)):
        yield range(start, min(n, start + size))


# ----------------------------------------------------------------------------- KV caches

def cache_kwarg(hf, past) -> dict:
    """The KV cache as the model's forward takes it: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (the old name is deprecated there)."""
    name = _CACHE_NAME.get(type(hf))
    if name is None:
        params = inspect.signature(hf.forward).parameters
        name = _CACHE_NAME[type(hf)] = "cache" if "cache" in params else "past_key_values"
    return {name: past}


_CACHE_NAME: dict[type, str] = {}


def _run_cache(hf, ids: torch.Tensor, past=None):
    with torch.no_grad():
        out = hf(input_ids=ids, **cache_kwarg(hf, past), use_cache=True, logits_to_keep=1)
    return out.past_key_values


def common_prefix(tokens: torch.Tensor) -> int:
    """Length of the prefix shared by every row of ``[batch, pos]`` tokens."""
    differs = (tokens != tokens[:1]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else tokens.shape[1]


_SHARED: OrderedDict = OrderedDict()   # recent shared-prefix caches, by model state and tokens
_SHARED_SIZE = 8


def _shared_cache(model: LoadedModel, tokens: torch.Tensor):
    """The KV cache of one row of tokens ``[1, pos]``, remembered for the model's current weights
    (a run asks for the same demonstration prefix many times)."""
    key = (id(model.hf), model.weights_version, str(tokens.device), tuple(tokens[0].tolist()))
    if key in _SHARED:
        _SHARED.move_to_end(key)
        return _SHARED[key]
    cache = _run_cache(model.hf, tokens)
    _SHARED[key] = cache
    while len(_SHARED) > _SHARED_SIZE:
        _SHARED.popitem(last=False)
    return cache


def prefix_cache(model: LoadedModel, tokens: torch.Tensor):
    """The KV cache of ``tokens`` ``[batch, pos]`` (pos >= 1): the part every row shares is run
    once (and remembered while the weights stay the same) and copied to every row; the rest
    runs for all rows together."""
    check_engine(model)
    check_length(model, tokens.shape[1])
    B, P = tokens.shape
    shared = common_prefix(tokens)
    if shared == 0:
        return _run_cache(model.hf, tokens)
    cache = repeat_cache(_shared_cache(model, tokens[:1, :shared]), B)
    if shared < P:
        cache = _run_cache(model.hf, tokens[:, shared:], cache)
    return cache


def repeat_cache(cache, n: int, from_layer: int = 0):
    """A copy of ``cache`` with every row repeated ``n`` times (``repeat_interleave``) in the
    layers from ``from_layer`` on; earlier layers are left as they are (a forward that starts
    at ``from_layer`` never reads them)."""
    out = copy.copy(cache)
    out.layers = []
    for i, layer in enumerate(cache.layers):
        new = copy.copy(layer)   # shares the tensors: a forward replaces them, never edits them
        if n > 1 and i >= from_layer and getattr(layer, "keys", None) is not None \
                and layer.keys.numel():
            new.keys = layer.keys.repeat_interleave(n, dim=0)
            new.values = layer.values.repeat_interleave(n, dim=0)
        out.layers.append(new)
    return out


# ----------------------------------------------------------------------------- self-check

#: relative tolerance of the engine check, by dtype (float32 at reduced matmul precision uses
#: the bf16 value); scaled by the largest logit
CHECK_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
_PROBE_TEXT = "The engine checks itself: 3 + 4 = 7, and two cached rows agree with full ones."


def _check_tolerance(model: LoadedModel, logits: torch.Tensor) -> float:
    dtype = model.dtype
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        dtype = torch.bfloat16
    return CHECK_RTOL.get(dtype, 5e-2) * max(1.0, float(logits.abs().max()))


def _engine_state(model: LoadedModel) -> tuple:
    return (model.has_bridge, tuple(id(m) for m in decoder_layers(model.hf)))


def _library_versions() -> tuple[str, str]:
    from importlib.metadata import PackageNotFoundError, requires

    found = versions()
    try:
        wanted = [r for r in requires("interp") or [] if r.startswith("transformers")]
    except PackageNotFoundError:
        wanted = []
    supported = f"; supported: {wanted[0].replace(' ', '')}" if wanted else ""
    return (f"with transformers {found['transformers']} and transformer-lens "
            f"{found['transformer-lens']}", supported)


def _fail(what: str, diff: float, tol: float) -> None:
    libs, supported = _library_versions()
    raise EngineCheckError(
        f"engine check failed: {libs} {what} by {diff:.3g} logits (tolerance {tol:.2g})"
        f"{supported}; install the locked versions (make install)")


@torch.no_grad()
def _probe(model: LoadedModel) -> None:
    ids = encode(model.tokenizer, _PROBE_TEXT, first=True)[:16]
    ids = torch.tensor([ids, ids[:-1] + ids[-2:-1]], device=model.device)   # two rows
    split = ids.shape[1] // 2
    full = model.hf(input_ids=ids, use_cache=False).logits[:, split:].float()
    tol = _check_tolerance(model, full)
    cache = repeat_cache(_run_cache(model.hf, ids[:1, :split]), 2)
    cached = model.hf(input_ids=ids[:, split:], **cache_kwarg(model.hf, cache),
                      use_cache=True).logits
    diff = float((cached[:, -full.shape[1]:].float() - full).abs().max())
    if not diff <= tol:
        _fail("a forward continued from a prefix cache differs from the full forward", diff, tol)
    if model.has_bridge:
        with model.bridge.hooks(fwd_hooks=[(f"blocks.{l}.hook_resid_pre", lambda act, hook: None)
                                           for l in range(model.n_layers)]):
            hooked = model.hf(input_ids=ids, use_cache=False).logits[:, split:].float()
        diff = float((hooked - full).abs().max())
        if not diff <= tol:
            _fail("a forward with no-op hooks differs from the unhooked forward", diff, tol)


def check_engine(model: LoadedModel) -> None:
    """Check, once per engine state (before and after the bridge is built, and after any change
    of the decoder modules), that a forward continued from a prefix KV cache equals the full
    forward and that no-op hooks change nothing; :class:`EngineCheckError` otherwise. Every
    fast path (shared-prefix patching, layer skipping, cached evaluation) rests on both."""
    state = _engine_state(model)
    if state in model.engine_checked:
        return
    model.engine_checked.add(state)   # first, so that the probe's own forwards do not recurse
    try:
        _probe(model)
    except BaseException:
        model.engine_checked.discard(state)
        raise


# ----------------------------------------------------------------------------- the forward

class _Resume(torch.nn.Module):
    """Stands in for a decoder layer before the first one that must run: returns the cached
    residual stream entering that layer, whatever it is given."""

    def __init__(self, resid: torch.Tensor):
        super().__init__()
        self.resid = resid

    def forward(self, hidden_states, *args, **kwargs):
        return self.resid


@contextmanager
def _skipping(hf, first_layer: int, resid: torch.Tensor | None):
    if not first_layer:
        yield
        return
    if resid is None:
        raise ConfigError("starting at a later layer needs the residual stream entering it")
    mods = decoder_layers(hf)
    saved = [mods[i] for i in range(first_layer)]
    stub = _Resume(resid)
    try:
        for i in range(first_layer):
            mods[i] = stub
        yield
    finally:
        for i, module in enumerate(saved):
            mods[i] = module


def forward(model: LoadedModel, ids: torch.Tensor, past=None, hooks: Sequence = (),
            first_layer: int = 0, resid: torch.Tensor | None = None,
            positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``ids`` ``[batch, pos]`` after the cache ``past`` (its rows must match the
    batch), with TransformerLens-named ``hooks`` (``[(name, fn)]``, needs the bridge), starting
    at ``first_layer`` from ``resid`` (the residual stream entering it, ``[batch, pos, d]``).
    Logits ``[batch, 1, vocab]`` of the last position only, or with ``positions`` (indices into
    ``ids``' positions, 1-D) of those, ``[batch, len(positions), vocab]``.
    Gradients flow when enabled by the caller."""
    check_engine(model)
    check_length(model, ids.shape[1] + (past.get_seq_length() if past is not None else 0))
    hook_ctx = model.bridge.hooks(fwd_hooks=list(hooks)) if hooks else nullcontext()
    with hook_ctx, _skipping(model.hf, first_layer, resid):
        out = model.hf(input_ids=ids, **cache_kwarg(model.hf, past), use_cache=past is not None,
                       logits_to_keep=positions if positions is not None else 1)
    return out.logits


def capture(names, select: Callable[[torch.Tensor], torch.Tensor] | None = None,
            graph: bool = False) -> tuple[dict, list]:
    """Hooks that keep each named activation: ``store, hooks = capture(names)``; after a
    :func:`forward` with ``hooks``, ``store[name]`` holds ``select(act)`` (default: the activation
    detached). ``graph=True`` keeps the activation itself, attached to the graph, and makes it
    the tensor the forward goes on with, so a backward reaches it."""
    store: dict = {}
    pick = select or ((lambda act: act) if graph else (lambda act: act.detach()))

    def keeper(name):
        def keep(act, hook=None):
            store[name] = pick(act)
            return act if graph else None
        return keep
    return store, [(name, keeper(name)) for name in names]


@torch.no_grad()
def residual_streams(model: LoadedModel, ids: torch.Tensor, past=None) -> list[torch.Tensor]:
    """The residual stream entering every layer (``blocks.{l}.hook_resid_pre``) for ``ids``."""
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)]
    store, hooks = capture(names)
    forward(model, ids, past, hooks)
    return [store[n] for n in names]


# ----------------------------------------------------------------------------- scoring

class PrefixRunner:
    """Runs many suffixes after one shared prefix, with or without a prefix KV cache.

    The prefix and each suffix are tokenised separately, so the cached path and the naive path
    (whole sequence per row) feed the model exactly the same tokens. Suffixes are right-padded;
    the attention mask hides the pads and position ids are explicit."""

    def __init__(self, model: LoadedModel, prefix: str, use_cache: bool = True):
        check_engine(model)
        self.model = model
        self.hf = model.hf
        self.prefix_ids = encode(model.tokenizer, prefix, first=True)
        self.use_cache = use_cache and len(self.prefix_ids) > 0
        self.pad_id = model.tokenizer.pad_token_id or 0
        self._cache = None
        if self.use_cache:
            self._cache = _shared_cache(model, torch.tensor([self.prefix_ids],
                                                            device=model.device))

    @property
    def P(self) -> int:
        return len(self.prefix_ids)

    def suffix_ids(self, text: str) -> list[int]:
        return encode(self.model.tokenizer, text, first=self.P == 0)

    def forward(self, suffixes: Sequence[list[int]], keep: int = 0):
        """Run prefix+suffix rows; returns (suffix logits [B, S or keep, V], cache, attention
        mask, lengths). ``keep`` > 0 keeps the logits of that many last positions only (rows
        must then have equal lengths)."""
        device = self.model.device
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        width = int(lengths.max())
        check_length(self.model, self.P + width)
        ids = right_padded(suffixes, self.pad_id, device)
        suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
        B, S, P = len(suffixes), width, self.P
        pos = (P + torch.arange(S, device=device))[None].expand(B, S)
        mask = torch.cat([torch.ones(B, P, dtype=torch.long, device=device), suffix_mask], 1)
        if self.use_cache:
            out = self.hf(input_ids=ids, attention_mask=mask, position_ids=pos,
                          **cache_kwarg(self.hf, repeat_cache(self._cache, B)), use_cache=True,
                          logits_to_keep=keep)
        else:
            prefix = torch.tensor(self.prefix_ids, dtype=torch.long, device=device)
            full = torch.cat([prefix[None].expand(B, P), ids], dim=1)
            full_pos = torch.arange(P + S, device=device)[None].expand(B, P + S)
            out = self.hf(input_ids=full, attention_mask=mask, position_ids=full_pos,
                          use_cache=True, logits_to_keep=keep or S)
        return out.logits, out.past_key_values, mask, lengths


@torch.no_grad()
def greedy_generate(model: LoadedModel, prefix: str, queries: Sequence[str], max_new_tokens: int,
                    batch_size: int = 8, use_cache: bool = True, bar=None) -> list[str]:
    """Greedy continuations of ``prefix + query`` for each query (decoded text)."""
    runner = PrefixRunner(model, prefix, use_cache=use_cache)
    eos = model.tokenizer.eos_token_id
    texts: list[str] = []
    for chunk in chunks(len(queries), batch_size):
        suffixes = [runner.suffix_ids(queries[i]) for i in chunk]
        logits, cache, mask, lengths = runner.forward(suffixes)
        rows = torch.arange(len(suffixes), device=logits.device)
        nxt = logits[rows, lengths - 1].argmax(-1)
        generated = [nxt]
        pos = runner.P + lengths
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model.hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                           **cache_kwarg(model.hf, cache), use_cache=True)
            cache, pos = out.past_key_values, pos + 1
            nxt = out.logits[:, -1].argmax(-1)
            generated.append(nxt)
        for row in torch.stack(generated, dim=1).tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
        if bar is not None:
            bar.update(len(suffixes))
    return texts


@torch.no_grad()
def choice_logprobs(model: LoadedModel, prefix: str, queries: Sequence[str],
                    choices: Sequence[str], sep: str = " ", batch_size: int = 8,
                    use_cache: bool = True, bar=None) -> torch.Tensor:
    """Summed log-probability of each ``sep + choice`` after each query: ``[n_queries,
    n_choices]``. When every choice is one token, one forward per query scores all of them."""
    runner = PrefixRunner(model, prefix, use_cache=use_cache)
    choice_ids = [encode(model.tokenizer, sep + c, first=False) for c in choices]
    C = len(choices)
    out = torch.empty(len(queries), C)
    if all(len(c) == 1 for c in choice_ids):   # one forward per query, last position only
        ids = [runner.suffix_ids(q) for q in queries]
        for group in length_groups(ids).values():
            for part in chunks(len(group), batch_size):
                idx = [group[i] for i in part]
                logits, *_ = runner.forward([ids[i] for i in idx], keep=1)
                logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
                out[idx] = logp[:, [c[0] for c in choice_ids]].cpu()
                if bar is not None:
                    bar.update(len(idx))
        return out
    per_batch = max(1, batch_size // C)
    for chunk in chunks(len(queries), per_batch):
        qs = [runner.suffix_ids(queries[i]) for i in chunk]
        suffixes = [q + cid for q in qs for cid in choice_ids]
        logits, *_ = runner.forward(suffixes)
        logp = torch.log_softmax(logits.float(), dim=-1)
        for r, suffix in enumerate(suffixes):
            q_len, c_len = len(qs[r // C]), len(choice_ids[r % C])
            targets = torch.tensor(suffix[q_len: q_len + c_len], device=logp.device)
            picked = logp[r, q_len - 1: q_len - 1 + c_len].gather(-1, targets[:, None])
            out[chunk[0] + r // C, r % C] = picked.sum().cpu()
        if bar is not None:
            bar.update(len(chunk))
    return out
