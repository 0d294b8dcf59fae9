"""Crash-safe files: one writer for JSON, text/CSV/HTML and safetensors, strict JSON, stage
fingerprints.

Every writer puts its bytes in a temporary file in the target's directory and ``os.replace``s
it, so a reader sees the old file or the new one, never half of one. JSON is strict
(``allow_nan=False``): a NaN or infinity becomes ``null`` (callers that care count them with
:func:`count_nonfinite`). A stage file that cannot be read is treated as missing
(:func:`read_json`), so a run cut short recomputes that stage.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from interp.errors import ConfigError, DiskFullError, InterpError, StaleResultsError
from interp.locks import hold_output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; on success it replaces ``path`` atomically (with the
    permissions an ordinary new file gets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - any writer (json, torch, safetensors) may be full
        if no_space(exc, path.parent):
            raise DiskFullError(f"no space left on {path.parent} while writing {path.name}"
                                ) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_space(exc: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of disk: ENOSPC, or a library error (torch, safetensors)
    raised while the file system has (almost) nothing left."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, InterpError):
        return False
    try:
        return shutil.disk_usage(directory).free < 16 * 2 ** 20
    except OSError:
        return False


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def finite(value: Any) -> Any:
    """``value`` with every NaN / infinity (also inside lists, dicts, tensors) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return finite(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return finite(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def count_nonfinite(value: Any) -> int:
    """How many NaN / infinite floats ``value`` holds (nested)."""
    if isinstance(value, float):
        return 0 if math.isfinite(value) else 1
    if isinstance(value, dict):
        return sum(count_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(count_nonfinite(v) for v in value)
    return 0


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN, no Infinity: they become null)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False, sort_keys=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, dumps(obj, indent) + "\n")


def read_json(path: str | Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (a stage cut short)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def write_csv(path: str | Path, frame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_tensors(path: str | Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return Path(path)


def load_tensors(path: str | Path) -> dict | None:
    """Tensors of a safetensors file, or None when it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError):
        return None


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings a result depends on."""
    text = json.dumps(finite(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_settings(path: Path, stored: dict | None, settings: dict, force: bool = False) -> bool:
    """Whether a finished stage at ``path`` (its recorded ``stored`` settings) can be reused for
    ``settings``. Equal settings: True. No record: False (recompute). Different settings: with
    ``force`` False (recompute); otherwise a one-line StaleResultsError naming what differs."""
    if stored is None:
        return False
    if finite(stored) == finite(settings):
        return True
    if force:
        return False
    keys = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    shown = ", ".join(f"{k} ({stored.get(k)!r} -> {settings.get(k)!r})" for k in keys[:4])
    raise StaleResultsError(f"{path} was computed with other settings: {shown}; rerun with "
                            "--force to recompute, or use another --out")


def check_writable(out: str | Path, lock: bool = True) -> Path:
    """Fail early (one line) when ``out`` cannot be an output directory; with ``lock``, take it
    for this process (one writer per directory, :func:`interp.locks.hold_output`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise ConfigError(f"--out {out} is not writable ({exc.strerror or exc})") from exc
    if lock:
        hold_output(out)
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
