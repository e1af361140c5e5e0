"""What a training run costs: wall time and peak memory, measured around the code that trains.

    with CostMeter() as cost:
        train_dpo(...)
    cost.seconds, cost.peak_memory_mb      # wall time; peak memory above what was in use when the block began

Peak memory is the accelerator's when the model trains on one (``torch.cuda.max_memory_allocated``, reset when the
block begins), else the process's resident memory (RSS): the peak RSS during the block minus the RSS at its start,
i.e. what training added on top of what was already loaded. On Linux the kernel keeps the peak exactly (``VmHWM``,
reset at the start through ``/proc/self/clear_refs``); elsewhere a background thread samples RSS every few
milliseconds. Before measuring, freed memory that the C allocator kept for reuse is handed back to the system
(glibc's ``malloc_trim``): otherwise a process that trained something big before would serve this block from memory
it already holds, and the block would look almost free. RSS counts everything the process touches (weights,
activations, optimiser state, the allocator's slack), so on a CPU it is an upper bound on what the tensors needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
from pathlib import Path

import psutil
import torch


def release_freed_memory() -> None:
    """Collect garbage and ask glibc to return freed heap memory to the system (no-op where there is no glibc)."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class CostMeter:
    """Context manager that measures wall seconds and peak memory (MB) of the code inside it."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.seconds = 0.0
        self.peak_memory_mb = 0.0
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def __enter__(self) -> CostMeter:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self._start_bytes = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            release_freed_memory()
            self._process = psutil.Process()
            self._start_bytes = self._peak_bytes = self._process.memory_info().rss
            self._kernel_peak = _reset_peak_rss()
            if not self._kernel_peak:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._sample_rss, daemon=True)
                self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _sample_rss(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak_bytes = max(self._peak_bytes, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self._kernel_peak:
            peak = _peak_rss_bytes()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak_bytes, self._process.memory_info().rss)
        self.seconds = time.perf_counter() - self._t0
        self.peak_memory_mb = max(peak - self._start_bytes, 0) / 2**20

    def as_dict(self) -> dict[str, float | str]:
        return {"seconds": round(self.seconds, 2), "peak_memory_mb": round(self.peak_memory_mb, 1),
                "memory_measured_on": self.device}
