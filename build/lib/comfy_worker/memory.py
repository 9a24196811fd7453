"""Giving freed memory back to the system after each task, so a worker's RSS follows its memory in use (issue 20).

What a task allocates and frees in the daemon (HTTP bodies, downloaded chunks, JSON of a ComfyUI history, the
buffers of a file copy in a worker thread) goes back to glibc's malloc, which keeps it: a later small
allocation above the freed space pins the heap's top, so the space is never trimmed, and the next task's
buffers may land elsewhere. RSS then grows while the memory in use stays flat: bench/bench_soak.py --tracemalloc
measured 4 KiB per task, and ``malloc_trim(0)`` took that daemon's RSS from 95 to 78 MiB at task 1,500 (without
tracemalloc, whose own allocations churn, the soak's simple tasks stayed flat either way: docs/benchmarks.md,
issue 20). :func:`release_free_memory` calls ``malloc_trim(0)``, which returns every whole free page of every
arena (``madvise(MADV_DONTNEED)``; about 0.5 ms after a soak task); the pages come back on demand, zeroed, if
malloc needs them again. So RSS follows the memory in use, whatever a task's allocations were.

glibc only: elsewhere (musl, macOS) there is no ``malloc_trim`` and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from typing import Any

_UNSET: Any = object()
_trim: Any = _UNSET  # libc's malloc_trim, None where there is none; looked up on first use


@dataclass(frozen=True)
class Released:
    rss_before: int  # bytes; 0 where /proc/self/statm cannot be read
    rss_after: int
    seconds: float

    @property
    def bytes(self) -> int:
        return max(0, self.rss_before - self.rss_after)


def _malloc_trim() -> Any:
    global _trim
    if _trim is _UNSET:
        _trim = None
        try:
            fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            return None
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        _trim = fn
    return _trim


def available() -> bool:
    """Whether this C library can give freed memory back (glibc)."""
    return _malloc_trim() is not None


def rss_bytes() -> int:
    """This process's resident set size, from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_free_memory() -> Released | None:
    """Give malloc's free pages back to the system; None where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return None
    before, t0 = rss_bytes(), time.perf_counter()
    trim(0)
    return Released(before, rss_bytes(), time.perf_counter() - t0)
