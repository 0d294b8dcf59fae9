"""What produced a result: installed distributions, the lock they should match, git commit,
host, CPU features, models and their weights.

``provenance.json`` names every installed distribution, so a number that an upstream release can
change is tied to the release that produced it. :func:`lock_status` compares them with the
lock file the project installs from (``requirements/lock-cpu.txt`` or ``lock-cuda.txt``); a
difference is said once per process in one warning line (unless ``INTERP_ALLOW_UNLOCKED=1``,
as ``make test-latest`` sets) and always recorded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

from interp.files import now, write_json
from interp.version import __version__

REPO = Path(__file__).resolve().parent.parent
#: the distributions whose versions the one-line ``versions`` record names
KEY_DISTRIBUTIONS = ("torch", "transformers", "transformer-lens", "peft", "accelerate")


def canonical(name: str) -> str:
    """A distribution name as the lock files write it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """``{name: version}`` of every installed distribution (names canonical, sorted)."""
    found = {canonical(d.metadata["Name"]): d.version for d in distributions()
             if d.metadata["Name"]}
    return dict(sorted(found.items()))


def versions() -> dict[str, str | None]:
    out = {"interp": __version__, "python": platform.python_version()}
    for name in KEY_DISTRIBUTIONS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def lock_file(installed: dict[str, str]) -> Path | None:
    """The lock this environment should match, if the package runs from a checkout that has
    one: the CUDA lock where a CUDA build of torch brought its ``nvidia-*`` wheels (decided from
    the installed distributions, so the command line does not import torch for it)."""
    cuda = any(name.startswith("nvidia-") for name in installed)
    path = REPO / "requirements" / ("lock-cuda.txt" if cuda else "lock-cpu.txt")
    return path if path.is_file() else None


def locked_versions(path: Path) -> dict[str, str]:
    """``{name: version}`` pinned by a lock file (``name==version`` lines)."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", path.read_text(), re.M)
    return {canonical(n): v for n, v in pins}


@functools.cache
def lock_status() -> dict:
    """The lock file, its sha256, and every pinned distribution whose installed version
    differs (``{name: {"locked", "installed"}}``); warns once per process on a difference."""
    installed = installed_distributions()
    path = lock_file(installed)
    if path is None:
        return {"file": None, "sha256": None, "matches": None, "differences": {}}
    diff = {name: {"locked": want, "installed": installed.get(name)}
            for name, want in locked_versions(path).items() if installed.get(name) != want}
    if diff and os.environ.get("INTERP_ALLOW_UNLOCKED", "") in ("", "0"):
        shown = ", ".join(f"{n} {d['installed']} (locked {d['locked']})"
                          for n, d in list(diff.items())[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        print(f"warning: installed versions differ from {path.name}: {shown}{more}; "
              f"results may not match the published numbers (make install)", file=sys.stderr)
    return {"file": str(path.relative_to(REPO)), "matches": not diff, "differences": diff,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def native_bf16() -> bool:
    """Whether the processor computes bf16 natively (AVX-512 BF16 or AMX on x86, or a CUDA
    device that supports it)."""
    try:
        import torch

        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
    except ImportError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def _git(*args: str) -> str | None:
    if not (REPO / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _git_commit() -> str | None:
    return _git("rev-parse", "HEAD")


def file_commit(relative: str) -> str | None:
    """The last commit that changed ``relative`` (a path in this checkout), None outside git
    (the pre-registered claims' definitions: ``interp/claims.py``)."""
    return _git("log", "-1", "--format=%H", "--", relative)


def weights_hash(directory: str | Path | None) -> str | None:
    """sha256 over a model directory's weight files (name, size and content)."""
    if directory is None or not Path(directory).is_dir():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in Path(directory).iterdir()
                   if p.suffix in (".safetensors", ".bin", ".gguf") and p.is_file())
    for p in files:
        digest.update(f"{p.name}:{p.stat().st_size}".encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16] if files else None


def model_record(model) -> dict:
    """A model's spec, weights hash, device and dtype (a LoadedModel or a spec string)."""
    if isinstance(model, str):
        from interp.models import source_path  # torch: only when provenance is written

        return {"spec": model, "weights_hash": weights_hash(source_path(model))}
    return {**model.describe(), "weights_hash": weights_hash(model.source_dir)}


def environment() -> dict:
    """Versions, every installed distribution, the lock and whether it matches, CPU bf16."""
    return {"versions": versions(), "distributions": installed_distributions(),
            "lock": lock_status(), "native_bf16": native_bf16(),
            "processor": platform.processor() or platform.machine()}


def write_provenance(out: str | Path, settings: dict, models: dict | None = None,
                     started: str | None = None, **extra) -> Path:
    """``out/provenance.json``: the environment (:func:`environment`), git commit, host, seeds,
    the resolved settings, each model's spec and weights hash (``models``: name -> LoadedModel
    or spec), start and end times."""
    seeds = {k: v for k, v in settings.items() if "seed" in k}
    record = {**environment(), "git_commit": _git_commit(), "host": platform.node(),
              "seeds": seeds, "settings": settings,
              "models": {name: model_record(m) for name, m in (models or {}).items()},
              "started": started, "ended": now(), **extra}
    return write_json(Path(out) / "provenance.json", record)
