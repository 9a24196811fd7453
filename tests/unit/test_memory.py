"""Freed memory goes back to the system after each task (issue 20): glibc's malloc keeps what a task freed
unless asked to trim, and a worker's RSS then creeps up a few KiB per task for weeks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from comfy_worker import memory
from comfy_worker.config import load_settings
from comfy_worker.upkeep import Upkeep

MiB = 1024 * 1024
pytestmark = pytest.mark.skipif(
    not memory.available() or not memory.rss_bytes(), reason="needs glibc's malloc_trim and /proc"
)


def fragment_the_heap(mib: int = 32, keep_every: int = 10) -> list[bytearray]:
    """What a task leaves: ``mib`` MiB of 64 KiB buffers (below malloc's mmap threshold: they come from the
    heap) freed, every ``keep_every``-th kept alive, so the heap's top cannot shrink by itself. Returns the kept
    ones."""
    blocks = [bytearray(64 * 1024) for _ in range(mib * 16)]
    kept = blocks[::keep_every]
    del blocks
    return kept


def test_freed_heap_memory_goes_back_to_the_system() -> None:
    kept = fragment_the_heap()
    released = memory.release_free_memory()
    assert released is not None
    assert released.bytes >= 16 * MiB, f"only {released.bytes / MiB:.1f} MiB given back"
    assert released.rss_after < released.rss_before - 16 * MiB
    again = memory.release_free_memory()  # nothing freed since: nothing more to give, and quickly
    assert again is not None and again.bytes < 2 * MiB and again.seconds < 0.05
    assert len(kept) == 32 * 16 // 10 + 1


def test_rss_stays_flat_over_many_tasks_ending(tmp_path: Path) -> None:
    """Each task end (with cleanup, and with KEEP_COMFY_FILES) gives back what the task freed: 50 tasks that each
    free 32 MiB in the heap (and keep 0.5 MiB) leave RSS at most a few MiB above what is kept, after every task.
    Without the trim the last task's freed 31 MiB would still be resident."""
    for keep in ("false", "true"):
        settings = load_settings({"COMFY_URL": "http://127.0.0.1:9", "KEEP_COMFY_FILES": keep,
                                  "LOCAL_STORAGE_DIR": str(tmp_path / "storage")})  # fmt: skip
        u = Upkeep(settings, comfy=None, work_root=tmp_path / keep / "w1")
        kept: list[bytearray] = []
        memory.release_free_memory()
        base = memory.rss_bytes()
        with capture_logs() as logs:
            for i in range(50):
                work_dir = tmp_path / keep / "w1" / f"task-{i}-1"
                work_dir.mkdir(parents=True)
                (work_dir / "out.png").write_bytes(b"x" * 1000)
                kept += fragment_the_heap(32, keep_every=64)
                asyncio.run(u.task_ended(None, work_dir))
                assert work_dir.exists() == (keep == "true")
                grown = memory.rss_bytes() - base - sum(len(b) for b in kept)
                assert grown < 8 * MiB, f"KEEP_COMFY_FILES={keep}, task {i}: {grown / MiB:.1f} MiB resident beyond " \
                    "what is kept"
        if keep == "false":
            ends = [e for e in logs if e["event"] == "task_files_removed"]
            assert len(ends) == 50 and all(e["trim_s"] < 1 for e in ends)
            assert min(e["memory_released_bytes"] for e in ends) >= 16 * MiB
        del kept
