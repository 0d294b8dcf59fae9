"""What a request would need, checked before its work starts.

A command estimates the memory and time its sizes imply and calls :func:`check`, which refuses a
request beyond the machine's available memory, or one that would run longer than
``INTERP_MAX_HOURS`` (default 48; ``0`` lifts the limit), in one line saying what it would need.
Time estimates are **lower bounds**: model FLOPs (2 x parameters per token and forward) at a rate
above any these CPUs reach, plus a per-forward floor, so a refusal is never a close call; memory
estimates count what the command keeps per item (pairs, scores, tokens).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from interp.errors import ConfigError, ResourceError

GIB = 1 << 30
CPU_FLOPS_PER_THREAD = 250e9   # above the ~75 GFLOP/s per core a SmolLM2 forward reaches here
GPU_FLOPS = 1e15               # above an H100/H200's dense bf16 peak
FORWARD_FLOOR_S = 1e-4         # per forward call, however small the model
DEFAULT_MAX_HOURS = 48.0


@dataclass(frozen=True)
class Need:
    """What ``what`` would need: ``bytes`` of memory at its peak, at least ``seconds``."""
    what: str
    bytes: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Need) -> Need:
        return Need(self.what, self.bytes + other.bytes, self.seconds + other.seconds)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``), or the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def max_seconds() -> float | None:
    """The time limit from ``INTERP_MAX_HOURS`` (None: no limit)."""
    text = os.environ.get("INTERP_MAX_HOURS", "").strip()
    try:
        hours = float(text) if text else DEFAULT_MAX_HOURS
    except ValueError:
        raise ConfigError(f"INTERP_MAX_HOURS must be a number of hours, got {text!r}") from None
    if hours < 0:
        raise ConfigError(f"INTERP_MAX_HOURS must be >= 0, got {text!r}")
    return hours * 3600 if hours else None


def flops_rate(device) -> float:
    """A rate (FLOP/s) above what ``device`` reaches on these models."""
    import torch

    if str(device).startswith("cuda"):
        return GPU_FLOPS
    return CPU_FLOPS_PER_THREAD * max(1, torch.get_num_threads())


def forward_seconds(model, tokens: float, forwards: float = 1.0, passes: float = 1.0) -> float:
    """A lower bound on the time of ``forwards`` forward calls over ``tokens`` tokens in all,
    each costing ``passes`` forward-equivalents (2 with a backward through frozen weights, 3 for
    full training)."""
    n_params = sum(p.numel() for p in model.hf.parameters())
    return (2.0 * n_params * tokens * passes / flops_rate(model.device)
            + FORWARD_FLOOR_S * forwards)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB / 10 else f"{n_bytes / (1 << 20):.0f} MiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.1f} s"


def check(need: Need) -> Need:
    """Refuse ``need`` (:class:`ResourceError`, one line) when it exceeds the available memory or
    the time limit; returns it otherwise."""
    free = available_memory()
    if need.bytes > free:
        raise ResourceError(f"{need.what} would need about {_size(need.bytes)} of memory; "
                            f"{_size(free)} are available (reduce the sizes asked)")
    limit = max_seconds()
    if limit is not None and need.seconds > limit:
        raise ResourceError(f"{need.what} would take at least {_duration(need.seconds)} on this "
                            f"machine; INTERP_MAX_HOURS allows {_duration(limit)} (set it higher, "
                            "or 0 for no limit, to run it anyway)")
    return need
