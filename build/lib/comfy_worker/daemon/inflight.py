"""One task in flight, from its claim to its final report: its context (work dir, progress, checkpoint, the
engine scoped to it), its pipeline slot, ``prepare``, the GPU stages (``submit`` + ``execute`` under the
engine's GPU grant), ``finish``, the outcome (complete / release / fail, retried through store outages), the
cleanup hand-off to :class:`comfy_worker.upkeep.Upkeep`, and its interruption (cancelled, lease lost, engine
died, shutdown).

:class:`TaskLifecycle` is a mixin of :class:`comfy_worker.daemon.core.Daemon`: the state it reads is the
daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from comfy_worker.engine.base import Engine
from comfy_worker.errors import LeaseLost, StoreError, StoreUnavailable
from comfy_worker.failures import decide
from comfy_worker.handlers.base import TaskContext
from comfy_worker.handlers.registry import ENGINE_TITLES
from comfy_worker.logs import get_logger, task_context
from comfy_worker.models import Task
from comfy_worker.pathsafe import path_key
from comfy_worker.progress import ProgressReporter, jsonable

if TYPE_CHECKING:
    from pathlib import Path

    from comfy_worker.config import Settings
    from comfy_worker.engine_host import EngineHost
    from comfy_worker.handlers.registry import Registry
    from comfy_worker.storage import Storage
    from comfy_worker.store.base import TaskStore
    from comfy_worker.upkeep import Upkeep
from comfy_worker.webhooks import WebhookDispatcher

log = get_logger(__name__)


@dataclass
class Inflight:
    task: Task
    ctx: TaskContext
    engine: Engine
    runner: asyncio.Task[None] | None = None
    holds_slot: bool = True
    on_gpu: bool = False  # granted the GPU: its job is (or is about to be) in the engine


class TaskLifecycle:
    """The tasks in flight, for the Daemon."""

    settings: Settings
    store: TaskStore
    storage: Storage
    registry: Registry
    handlers: dict[str, Any]
    host: EngineHost
    upkeep: Upkeep
    webhooks: WebhookDispatcher
    fetch: Any
    work_root: Path
    _slots: asyncio.Semaphore
    _inflight: dict[str, Inflight]
    _stop: asyncio.Event
    _ending: weakref.WeakSet[asyncio.Task[Any]]

    def _start_task(self, task: Task) -> None:
        work_dir = self.work_root / f"{path_key(task.task_id)}-{task.attempts}"  # a task id is user text
        reporter = ProgressReporter(self.store, task, self.settings.progress_interval_s)

        async def checkpoint(state: dict[str, Any]) -> None:
            await self.store.update_progress(task.task_id, task.lease_token or "", None, state)

        cancel = asyncio.Event()
        engine = self.registry.engine_for(task.task_type)

        def gpu_grant() -> contextlib.AbstractAsyncContextManager[None]:  # GPU work outside execute (a re-run)
            return self.host.arbiter.use(engine.name, cancel=cancel)

        ctx = TaskContext(
            task=task,
            settings=self.settings,
            engine=engine.scope(task, cancel, guard=gpu_grant),  # ComfyUI: the shared client, scoped to this task
            storage=self.storage,
            fetch=self.fetch,
            work_dir=work_dir,
            progress=reporter,
            checkpoint=checkpoint,
            cancel=cancel,
        )
        entry = Inflight(task, ctx, engine)
        self._inflight[task.task_id] = entry
        entry.runner = asyncio.create_task(self._run_task(entry, reporter), name=f"task-{task.task_id}")

    def _give_back_slot(self, entry: Inflight) -> None:
        if entry.holds_slot:
            entry.holds_slot = False
            self._slots.release()

    async def _run_task(self, entry: Inflight, reporter: ProgressReporter) -> None:
        task, ctx = entry.task, entry.ctx
        t0 = time.monotonic()
        with task_context(task.task_id, task.task_type, attempt=task.attempts):
            log.info("task_claimed", priority=task.priority, max_attempts=task.max_attempts)
            try:
                handler = self.handlers[task.task_type]
                try:
                    await entry.engine.ensure_running()  # started on its first task; waits while it restarts
                    prepared = await handler.prepare(ctx)
                    log.info("task_prepared", prepare_s=round(time.monotonic() - t0, 3))
                    executed = await self._on_gpu(entry, handler, prepared)
                finally:
                    self._give_back_slot(entry)
                outcome = await handler.finish(ctx, executed)
                await reporter.close()
                await self.store.complete(task.task_id, task.lease_token or "", outcome.result, outcome.output_url)
                self.upkeep.note_success()
                log.info("task_complete", output_url=outcome.output_url, duration_s=round(time.monotonic() - t0, 3))
            except BaseException as exc:
                await reporter.close()
                await self._settle_failure(entry, exc, time.monotonic() - t0)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                self._give_back_slot(entry)
                self._inflight.pop(task.task_id, None)
                self.webhooks.wake()  # its end's event (if any) is in the outbox now
                ending = asyncio.current_task()
                if ending is not None:
                    self._ending.add(ending)  # shutdown waits for its cleanup before the engines stop
                await self.upkeep.task_ended(ctx.engine, ctx.work_dir)

    async def _on_gpu(self, entry: Inflight, handler: Any, prepared: Any) -> Any:
        """``submit`` + ``execute`` under the GPU grant of the task's engine (after a hand-over if needed)."""
        ctx, engine = entry.ctx, entry.engine
        waited = time.monotonic()
        async with self.host.arbiter.use(engine.name, model=self.host.model_for(ctx.task), cancel=ctx.cancel):
            waited = time.monotonic() - waited
            if waited >= 0.05:
                log.info("gpu_granted", engine=engine.name, waited_s=round(waited, 3))
            await engine.ensure_running()  # it may have died (and restarted) while this task waited
            entry.on_gpu = True
            submit = getattr(handler, "submit", None)
            if submit is not None:
                prepared = await submit(ctx, prepared)
            return await handler.execute(ctx, prepared)

    async def _settle_failure(self, entry: Inflight, exc: BaseException, elapsed: float) -> None:
        task, ctx, engine = entry.task, entry.ctx, entry.engine
        outcome = decide(
            exc,
            ctx.cancel_reason[0] if ctx.cancel_reason else None,
            engine_title=ENGINE_TITLES.get(engine.name, engine.name),
            engine_log_tail=lambda: engine.log_tail(40),
            disk_fault=self.upkeep.disk_fault,
            elapsed_s=elapsed,
            engine_gone=getattr(engine, "gone", None),  # an attached ComfyUI that went away: where and why
        )
        if outcome.action == "abandon":
            log.info("task_abandoned", reason=outcome.reason, error=str(exc))
            if outcome.reason == "cancelled":  # nobody will resume its uploads (a lost lease: the new owner may)
                await self._discard_uploads(ctx)
            return
        if outcome.action == "release":
            if outcome.reason == "disk_full":
                self.upkeep.note_disk_fault(outcome.message)
            await self._report(lambda: self.store.release(task.task_id, task.lease_token or ""), "release")
            level = log.info if outcome.reason == "shutdown" else log.warning
            level("task_released", reason=outcome.reason, engine=engine.name, error=outcome.message or None)
            return
        details = {**outcome.details, "engine": engine.name}
        log.warning("task_failed", error=outcome.message, error_type=details["error_type"], retryable=outcome.retryable)
        failed = await self._report(
            lambda: self.store.fail(
                task.task_id, task.lease_token or "", outcome.message, jsonable(details), outcome.retryable
            ),
            "fail",
        )
        # failed for good: its open uploads are given up now. One the next attempt will make stays in the
        # checkpoint for it to resume.
        if isinstance(failed, Task) and failed.status.terminal:
            await self._discard_uploads(ctx)

    async def _discard_uploads(self, ctx: TaskContext) -> None:
        if not ctx.uploads.entries:
            return
        try:
            await self.storage.discard_uploads(ctx.uploads)
        except Exception as exc:  # never in the way of the task's end; the start-up sweep is the fallback
            log.warning("uploads_not_discarded", error=str(exc))

    async def _report(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """A final report, retried through short database outages; a lost lease ends it quietly. If the
        database stays away, the lease expires and another worker recovers the task. Returns what the call
        returned, None when it did not go through."""
        for attempt in range(6):
            try:
                return await call()
            except LeaseLost as exc:
                log.info("report_rejected", what=what, error=str(exc))
                return None
            except StoreUnavailable as exc:
                log.warning("report_failed", what=what, error=str(exc), attempt=attempt + 1)
                await asyncio.sleep(min(2**attempt * 0.5, 10))
            except StoreError as exc:
                log.error("report_refused", what=what, error=str(exc))
                return None
        return None

    def _abandon(self, task_id: str, reason: str) -> None:
        entry = self._inflight.get(task_id)
        if entry is None or entry.ctx.cancel.is_set():
            return
        log.info("task_interrupting", task_id=task_id, reason=reason)
        entry.ctx.cancel_reason.append(reason)
        entry.ctx.cancel.set()

    def _on_engine_exit(self, engine: str, returncode: int | None) -> None:
        """An engine whose process died under its tasks (ComfyUI; attached at COMFY_URL: it went away, returncode
        None): interrupt the tasks whose job was in it. Tasks still preparing or waiting for the GPU go on once it
        is back (their inputs are on disk, nothing of theirs was in the engine)."""
        if self._stop.is_set():
            return
        mine = [tid for tid, e in self._inflight.items() if e.engine.name == engine and e.on_gpu]
        log.error("engine_died", engine=engine, returncode=returncode, inflight=len(mine))
        for task_id in mine:
            self._abandon(task_id, "engine_died")
