"""Exclusive locks as files: one writer per output directory, one worker per sweep cell.

A lock is created with its content in one step (a temporary file hard-linked to the lock's
name, which fails if the name exists), so no reader ever sees an empty lock. A lock whose
process is dead on this host, or older than :data:`LOCK_TIMEOUT` elsewhere, is stale and taken
over.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from interp.errors import ConfigError

LOCK_TIMEOUT = 24 * 3600   # seconds after which another host's lock counts as stale
OUT_LOCK = ".interp.lock"


def _holder(what: str) -> dict:
    return {"holder": what, "pid": os.getpid(), "host": socket.gethostname(),
            "time": time.time(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def is_stale(held: dict) -> bool:
    """Whether a lock's holder is gone: a dead process on this host, or an old lock."""
    if time.time() - float(held.get("time", 0)) > LOCK_TIMEOUT:
        return True
    if held.get("host") == socket.gethostname() and held.get("pid"):
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return False
    return False


def _create(path: Path, info: dict) -> bool:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def try_lock(path: str | Path, what: str) -> dict | None:
    """Take the lock at ``path``; None on success, else the live holder's record. A stale lock
    is taken over (with a warning naming its holder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path, _holder(what)):
            return None
        held = read_lock(path)
        if not held and time.time() - _mtime(path) < 5:
            time.sleep(0.2)               # written by a tool that is not this one: wait
            continue
        if not is_stale(held):
            return held
        print(f"warning: taking over the stale lock {path} of {describe(held)}",
              file=sys.stderr)
        path.unlink(missing_ok=True)
    return read_lock(path) or {"holder": "unknown"}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def describe(held: dict) -> str:
    return (f"{held.get('holder', 'another run')} (pid {held.get('pid', '?')} on "
            f"{held.get('host', '?')}, started {held.get('started', '?')})")


_HELD: set[Path] = set()   # the output locks this process holds


def release_outputs(out: str | Path | None = None) -> None:
    """Give back the lock of ``out`` (all this process holds when None): at the end of a
    command or run, so that a library caller (a notebook) does not keep them."""
    paths = list(_HELD) if out is None else [(Path(out) / OUT_LOCK).resolve()]
    for path in paths:
        if path in _HELD and read_lock(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        _HELD.discard(path)


def hold_output(out: str | Path) -> None:
    """One writer per output directory: take ``out``'s lock until :func:`release_outputs` (the
    end of the command or run) or the process's exit; again from the same process is a no-op;
    ranks other than 0 of a distributed run do not take it.
    A second run into ``out`` stops with one line naming the holder (ConfigError, exit 2)."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return
    path = (Path(out) / OUT_LOCK).resolve()
    if path in _HELD:
        return
    held = try_lock(path, " ".join(["interp", *sys.argv[1:3]]).strip())
    if held is not None and not (held.get("pid") == os.getpid()
                                 and held.get("host") == socket.gethostname()):
        raise ConfigError(f"{out} is in use by {describe(held)}; wait for it to finish, or "
                          f"choose another --out")
    _HELD.add(path)


atexit.register(release_outputs)   # a process that ends keeps no lock
