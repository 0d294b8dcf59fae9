"""Time and peak memory of a block, for the benchmarks."""

from __future__ import annotations

import time

import torch


class Peak:
    """Time and peak memory of a block above its starting point: the CUDA allocator's peak, or on
    CPU the process's resident high-water mark (reset through /proc/self/clear_refs; each method
    runs in a fresh process so memory freed by another cannot hide its own)."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")

    @staticmethod
    def _rss(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._rss("VmRSS")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._rss("VmHWM")
        self.seconds = time.perf_counter() - self.start
        self.mib = round(max(0, peak - self.base) / 2**20, 1)
