"""Peak memory while a block of work runs (training, for the PEFT table's memory column).

On a GPU: torch's peak allocated bytes on the device (reset at the start). On CPU: the process's resident set,
sampled by a background thread every `interval` seconds (Linux /proc; elsewhere nothing is reported). RSS holds
everything the process touched (weights, activations, optimizer state, the allocator's free lists), so the
useful figure is `increase_mb`: the peak during the block minus the resident set at its start, i.e. what
training itself added (activations, gradients, optimizer moments) — the part parameter-efficient methods shrink.
A multirun keeps one process for all its jobs, and the C allocator keeps freed memory mapped: without care
a later job would reuse what an earlier one freed and show no increase. So the block starts by handing freed
memory back to the system (glibc's malloc_trim), and every job measures what it allocates itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release_free_memory() -> None:
    """Return the C allocator's free pages to the system (glibc malloc_trim; a no-op elsewhere)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_bytes() -> int | None:
    """The process's resident set size now, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """with PeakMemory(device) as peak: ...; then peak.result() -> dict (empty when nothing can be measured)."""

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.cuda = device == "cuda" and torch.cuda.is_available()
        self.interval = interval
        self.start = self.peak = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        release_free_memory()
        self.start = self.peak = resident_bytes()
        if self.start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = resident_bytes()
            if now is not None and now > self.peak:
                self.peak = now

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)  # never hold up an exit (a requeue signal ends training this way)
            now = resident_bytes()
            if now is not None:
                self.peak = max(self.peak, now)

    def result(self) -> dict:
        if self.start is None or self.peak is None:
            return {}
        mb = 2**20
        return {"what": "cuda allocated" if self.cuda else "cpu resident set",
                "start_mb": round(self.start / mb, 1), "peak_mb": round(self.peak / mb, 1),
                "increase_mb": round((self.peak - self.start) / mb, 1)}
