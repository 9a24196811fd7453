"""What the daemon writes into a task row while it runs: throttled progress, and JSON-safe error details."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from asyncio_throttle import Throttler

from comfy_worker.errors import LeaseLost, StoreError
from comfy_worker.logs import get_logger
from comfy_worker.models import Task
from comfy_worker.store.base import TaskStore

log = get_logger(__name__)


class ProgressReporter:
    """Coalesces a task's progress and writes it at most once per interval (asyncio-throttle)."""

    def __init__(self, store: TaskStore, task: Task, interval_s: float) -> None:
        self._store, self._task = store, task
        self._throttler = Throttler(rate_limit=1, period=max(interval_s, 0.001))
        self._latest: dict[str, Any] | None = None
        self._pending = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name=f"progress-{task.task_id}")

    async def __call__(self, progress: dict[str, Any]) -> None:
        self._latest = progress
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            async with self._throttler:
                self._pending.clear()
                try:
                    await self._store.update_progress(self._task.task_id, self._task.lease_token or "", self._latest)
                except LeaseLost:
                    return
                except StoreError as exc:
                    log.warning("progress_update_failed", error=str(exc))

    async def close(self) -> None:
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
