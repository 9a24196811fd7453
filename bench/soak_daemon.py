"""The daemon as bench/bench_soak.py runs it with ``--tracemalloc``: tracemalloc on, memory figures on a signal.

    python bench/soak_daemon.py <dir> --worker-id X ...   (the rest: ``python -m comfy_worker``'s arguments)

Bench-only: the product has no hook for this. It starts tracemalloc (``CW_TRACEMALLOC_FRAMES`` frames per
allocation, default 1: attribution by line, the cheapest; 0: no tracemalloc, only the malloc figures, without
tracemalloc's cost in time and memory), installs two signal handlers and then calls the normal entry point
(:func:`comfy_worker.cli.main`):

* SIGUSR1: after a full ``gc.collect()``, write ``<dir>/stats-<n>.json``: tracemalloc's traced bytes, glibc's
  ``mallinfo2`` (bytes malloc holds from the OS, in use, free inside it), live objects, threads, asyncio tasks;
* SIGUSR2: the same, and (when tracing) dump the snapshot to ``<dir>/snap-<n>.tracemalloc``
  (``tracemalloc.Snapshot.load``).

``CW_SOAK_NO_TRIM=1`` turns off what issue 20 added, giving freed memory back after each task
(:mod:`comfy_worker.memory`): the baseline that fix is measured against.

``n`` counts the signals; each file is written under a temporary name and renamed, so a reader that sees it
sees it whole. The handlers run in the main thread between bytecodes (Python's signal handling), i.e. while
the event loop is between callbacks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]  # fmt: skip


def mallinfo() -> dict[str, int]:
    """glibc's heap figures (all arenas): ``arena`` bytes from sbrk/mmap'd arenas, ``hblkhd`` in big mmap'd
    blocks, ``uordblks`` in use, ``fordblks`` free but kept. Empty where glibc has no mallinfo2."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def stats() -> dict[str, Any]:
    current, peak = tracemalloc.get_traced_memory()
    try:
        tasks = len(asyncio.all_tasks(asyncio.get_running_loop()))
    except RuntimeError:
        tasks = -1
    with open("/proc/self/statm") as fh:
        rss_pages = int(fh.read().split()[1])
    return {
        "rss": rss_pages * os.sysconf("SC_PAGE_SIZE"),
        "traced": current,
        "traced_peak": peak,
        "tracemalloc_overhead": tracemalloc.get_tracemalloc_memory(),
        "mallinfo": mallinfo(),
        "objects": len(gc.get_objects()),
        "threads": threading.active_count(),
        "asyncio_tasks": tasks,
    }


def install(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    count = [0]

    def write(path: Path, fn: Any) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fn(tmp)
        tmp.replace(path)

    def handler(signum: int, _frame: Any) -> None:
        count[0] += 1
        n = count[0]
        gc.collect()
        if signum == signal.SIGUSR2 and tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot()
            write(out / f"snap-{n}.tracemalloc", snap.dump)
        data = json.dumps(stats())
        write(out / f"stats-{n}.json", lambda p: p.write_text(data))

    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGUSR2, handler)


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    frames = int(os.environ.get("CW_TRACEMALLOC_FRAMES", "1"))
    if frames > 0:
        tracemalloc.start(frames)
    install(out)
    if os.environ.get("CW_SOAK_NO_TRIM") == "1":
        import comfy_worker.upkeep

        comfy_worker.upkeep.release_free_memory = lambda: None  # type: ignore[assignment]
    from comfy_worker.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
