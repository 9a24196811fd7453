"""Heartbeats and recovery: each heartbeat extends the leases of the tasks in flight, refreshes the worker
row's metadata, and says which tasks to drop (cancelled, lease lost) and whether this worker is draining; the
stale loop requeues the tasks of dead workers (``requeue_stale``: expired leases, free presence locks).

A mixin of :class:`comfy_worker.daemon.core.Daemon`: the state it reads is the daemon's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from comfy_worker.errors import StoreError
from comfy_worker.logs import get_logger
from comfy_worker.models import WorkerStatus

if TYPE_CHECKING:
    from comfy_worker.config import Settings
    from comfy_worker.daemon.inflight import Inflight
    from comfy_worker.engine_host import EngineHost
    from comfy_worker.store.base import TaskStore
    from comfy_worker.upkeep import Upkeep

log = get_logger(__name__)


class Heartbeat:
    """Heartbeats and stale recovery, for the Daemon."""

    settings: Settings
    store: TaskStore
    host: EngineHost
    upkeep: Upkeep
    worker_id: str
    _inflight: dict[str, Inflight]
    _heartbeat_lock: asyncio.Lock
    _deregistered: bool
    _draining: bool
    _models_report: dict[str, Any]

    if TYPE_CHECKING:  # the Daemon's other parts

        def _abandon(self, task_id: str, reason: str) -> None: ...

        def request_stop(self, reason: str = "signal") -> None: ...

    async def _metadata(self) -> dict[str, Any]:
        return {**self._models_report, **self.host.metadata(), "inflight": len(self._inflight),
                **await self.upkeep.metadata()}

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            meta = await self._metadata()
            async with self._heartbeat_lock:
                if self._deregistered:
                    return
                try:
                    reply = await self.store.heartbeat(
                        self.worker_id, self.settings.lease_seconds, meta, list(self._inflight)
                    )
                except StoreError as exc:
                    log.warning("heartbeat_failed", error=str(exc))
                    continue
            for task_id in reply.cancelled:
                self._abandon(task_id, "cancelled")
            for task_id in reply.lost:
                self._abandon(task_id, "lost")
            if reply.worker_status is WorkerStatus.DRAINING and not self._draining:
                log.info("worker_draining", inflight=len(self._inflight))
                self._draining = True
                if not self._inflight:
                    self.request_stop("drained")

    async def _stale_loop(self) -> None:
        delay = self.settings.stale_check_interval
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.stale_check_interval
            try:
                report = await self.store.requeue_stale(self.settings.worker_timeout_s)
            except StoreError as exc:
                log.warning("stale_check_failed", error=str(exc))
                continue
            if report:
                log.info("stale_recovered", **report.log_fields())
            if report.recheck_in_s is not None:  # a presence lock was found free: look again when its grace ends
                delay = min(delay, report.recheck_in_s + 0.05)
