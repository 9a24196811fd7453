"""The claim loop: take a pipeline slot, wait for a claimable engine and disk room, claim one task with the
GPU-affinity preference, hand it to :mod:`comfy_worker.daemon.inflight`; back off through store outages; stop
when drained or (``--exit-when-idle``) idle.

A mixin of :class:`comfy_worker.daemon.core.Daemon`: the state it reads is the daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from comfy_worker.errors import StoreError, StoreUnavailable
from comfy_worker.logs import get_logger

if TYPE_CHECKING:
    from comfy_worker.config import Settings
    from comfy_worker.daemon.inflight import Inflight
    from comfy_worker.daemon.warm import WarmStart
    from comfy_worker.engine_host import EngineHost
    from comfy_worker.models import Task
    from comfy_worker.store.base import TaskStore
    from comfy_worker.upkeep import Upkeep

log = get_logger(__name__)


class ClaimLoop:
    """Claiming, for the Daemon."""

    settings: Settings
    store: TaskStore
    host: EngineHost
    upkeep: Upkeep
    worker_id: str
    exit_when_idle: bool
    task_types: list[str]
    _slots: asyncio.Semaphore
    _inflight: dict[str, Inflight]
    _stop: asyncio.Event
    _draining: bool
    warm: WarmStart

    if TYPE_CHECKING:  # the Daemon's other parts

        def _start_task(self, task: Task) -> None: ...

        def request_stop(self, reason: str = "signal") -> None: ...

    async def _claim_loop(self) -> None:
        backoff = self.settings.poll_interval
        while not self._stop.is_set():
            await self._until_stop(self._slots.acquire())
            if self._stop.is_set():
                self._slots.release()
                return
            handed_over = False
            try:
                types = await self._claimable_types()
                if not types:
                    continue
                try:
                    claimable = await self._until_stop(self.upkeep.may_claim())  # the disk floor
                    # affinity: prefer what runs on the engine (and model) the GPU will hold after what is in flight
                    preference = self.host.preference([e.task for e in self._inflight.values()])
                    tasks = (
                        await self.store.claim(
                            self.worker_id, types, 1, self.settings.lease_seconds, preference=preference
                        )
                        if claimable
                        else []
                    )
                except StoreUnavailable as exc:
                    log.warning("claim_failed", error=str(exc), retry_in_s=round(backoff, 2))
                    await self._until_stop(asyncio.sleep(backoff))
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = self.settings.poll_interval
                if tasks:
                    self.warm.claimed()  # a warm-up prompt still running gives way
                    self._start_task(tasks[0])
                    handed_over = True
                    continue
                if self._draining and not self._inflight:
                    self.request_stop("drained")
                    return
                if self.exit_when_idle and not self._inflight and await self._queue_empty():
                    self.request_stop("idle")
                    return
            finally:
                if not handed_over:
                    self._slots.release()
            await self._until_stop(self.store.wait_for_work(self.settings.poll_interval))

    async def _queue_empty(self) -> bool:
        try:
            snap = await self.store.fleet_snapshot()
        except StoreError:
            return False
        return not any(q["queued"] or q["running"] for q in snap["queue"] if q["task_type"] in self.task_types)

    async def _claimable_types(self) -> list[str]:
        """The task types whose engine can take tasks now; when none can (every engine restarting or given
        up), wait (bounded) for one: claiming while an engine restarts would only fail the task."""
        types = self.host.claimable_types()
        if types:
            return types
        log.info("waiting_for_engines", engines=self.host.states())
        deadline = time.monotonic() + self.settings.poll_interval * 5
        while not types and not self._stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            types = self.host.claimable_types()
        return types

    async def _until_stop(self, aw: Any) -> Any:
        """Await ``aw`` unless a stop is requested first (then cancel it and return None)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
