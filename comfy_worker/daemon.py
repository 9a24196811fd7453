"""The worker daemon: owns time. Claiming, pipelining, heartbeats, recovery, cancellation, shutdown.

Pipelining: up to ``1 + PREFETCH`` tasks hold a *GPU slot* at once. A slot is taken before claiming and given
back when the task's ``execute`` stage ends, so while task N runs, task N+1 is claimed, its inputs fetched and
uploaded, and its prompt queued in ComfyUI behind N (ComfyUI starts it the moment N ends); N's outputs upload
(``finish``) while N+1 runs. Heartbeats extend every lease we hold and tell us which tasks to drop.

Shutdown (SIGTERM/SIGINT, a ``draining`` status, or ``--exit-when-idle``): stop claiming; release at once
what has not started on the GPU; let running work finish within SHUTDOWN_GRACE_S, then interrupt and release
it; deregister; stop ComfyUI. A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker import __version__
from comfy_worker.config import Settings
from comfy_worker.engine import ComfyClient, ComfySupervisor
from comfy_worker.errors import (
    ComfyWorkerError,
    EngineUnavailable,
    ExecutionInterrupted,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    is_retryable,
)
from comfy_worker.handlers.base import Handler, TaskContext
from comfy_worker.inputs import settings_fetcher
from comfy_worker.logs import get_logger, task_context
from comfy_worker.models import Task, WorkerInfo, WorkerStatus
from comfy_worker.models_manifest import startup_report
from comfy_worker.pathsafe import path_key
from comfy_worker.progress import ProgressReporter, jsonable
from comfy_worker.storage import Storage
from comfy_worker.store.base import TaskStore
from comfy_worker.upkeep import Upkeep

log = get_logger(__name__)


@dataclass
class Inflight:
    task: Task
    ctx: TaskContext
    runner: asyncio.Task[None] | None = None
    holds_slot: bool = True


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        store: TaskStore,
        storage: Storage,
        supervisor: ComfySupervisor,
        client: ComfyClient,
        handlers: dict[str, Handler],
        worker_id: str,
        exit_when_idle: bool = False,
    ) -> None:
        self.settings = settings
        self.store, self.storage, self.supervisor, self.client = store, storage, supervisor, client
        self.handlers = handlers
        self.worker_id = worker_id
        self.exit_when_idle = exit_when_idle
        self.task_types = list(settings.task_types) or sorted(handlers)
        # "comfy-worker", not "comfy_worker": a directory named like the package would shadow it for scripts run in /tmp
        self.work_root = Path(settings.work_dir or Path(tempfile.gettempdir()) / "comfy-worker") / worker_id
        # the disk floor, each task's cleanup, orphan sweeps (never of what runs here)
        self.upkeep = Upkeep(settings, client=client, work_root=self.work_root, active=lambda: set(self._inflight))
        self.fetch = settings_fetcher(settings, room=self.upkeep.room_for_input)
        self._slots = asyncio.Semaphore(1 + settings.prefetch)
        self._inflight: dict[str, Inflight] = {}
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: skip the grace period
        self._draining = False
        self._engine_meta: dict[str, Any] = {}
        self.exit_reason = ""

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect everything and register; raises ComfyWorkerError with one clear line on failure."""
        self.upkeep.configure()
        await self.store.connect()
        if self.settings.auto_migrate and self.store.name != "supabase":  # PostgREST cannot run DDL
            applied = await self.store.migrate()
            if applied:
                log.info("schema_migrated", applied=applied)
        else:
            await self.store.check_schema()  # SchemaMissing says how to apply sql/
        await self.storage.check()
        self.supervisor.on_exit = self._on_engine_exit
        await self.supervisor.start()
        await self.client.connect()
        self._engine_meta = await self._engine_metadata()
        await self.upkeep.start()
        self._engine_meta.update(await asyncio.to_thread(startup_report, self.settings))  # models_missing, …
        if self._engine_meta.get("models_missing"):
            log.warning("models_missing", files=self._engine_meta["models_missing"], fix="comfy-worker models sync")
        await self.store.register_worker(
            WorkerInfo(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                __version__,
                tuple(self.task_types),
                {**self._engine_meta, "healthy": True, **await self.upkeep.metadata()},
            )
        )
        log.info(
            "worker_registered",
            task_types=self.task_types,
            prefetch=self.settings.prefetch,
            comfy_url=self.supervisor.base_url,
            **self._engine_meta,
        )

    async def run(self) -> int:
        """Run until stopped; returns the process exit code (0 for every orderly stop)."""
        self._install_signal_handlers()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._stale_loop(), name="stale"),
            asyncio.create_task(self.upkeep.sweep_loop(), name="sweep"),
        ]
        try:
            await self._claim_loop()
            await self._shutdown()
        finally:
            for t in background:
                t.cancel()
            for t in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self._close()
        log.info("worker_stopped", reason=self.exit_reason)
        return 0

    def request_stop(self, reason: str = "signal") -> None:
        if self._stop.is_set():
            log.warning("shutdown_hurried", reason=reason)
            self._hurry.set()
            return
        self.exit_reason = self.exit_reason or reason
        log.info("shutdown_requested", reason=reason, inflight=len(self._inflight))
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)

    # --- claiming -------------------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = self.settings.poll_interval
        while not self._stop.is_set():
            await self._until_stop(self._slots.acquire())
            if self._stop.is_set():
                self._slots.release()
                return
            handed_over = False
            try:
                if not await self._engine_ready():
                    continue
                try:
                    claimable = await self._until_stop(self.upkeep.may_claim())  # the disk floor
                    tasks = (
                        await self.store.claim(self.worker_id, self.task_types, 1, self.settings.lease_seconds)
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

    async def _engine_ready(self) -> bool:
        """Wait (bounded) until ComfyUI is up; claiming while it restarts would only fail the task."""
        if self.supervisor.healthy:
            return True
        log.info("waiting_for_comfyui")
        deadline = time.monotonic() + self.settings.poll_interval * 5
        while not self.supervisor.healthy and not self._stop.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110 - no event for "became healthy"
            await asyncio.sleep(0.2)
        return self.supervisor.healthy

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

    # --- one task -------------------------------------------------------------------------------------------

    def _start_task(self, task: Task) -> None:
        work_dir = self.work_root / f"{path_key(task.task_id)}-{task.attempts}"  # a task id is user text
        reporter = ProgressReporter(self.store, task, self.settings.progress_interval_s)

        async def checkpoint(state: dict[str, Any]) -> None:
            await self.store.update_progress(task.task_id, task.lease_token or "", None, state)

        cancel = asyncio.Event()
        ctx = TaskContext(
            task=task,
            settings=self.settings,
            client=self.upkeep.task_client(task, cancel),  # the shared client, scoped to this task's files
            storage=self.storage,
            fetch=self.fetch,
            work_dir=work_dir,
            progress=reporter,
            checkpoint=checkpoint,
            cancel=cancel,
        )
        entry = Inflight(task, ctx)
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
                    prepared = await handler.prepare(ctx)
                    log.info("task_prepared", prepare_s=round(time.monotonic() - t0, 3))
                    executed = await handler.execute(ctx, prepared)
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
                await self.upkeep.task_ended(ctx.client, ctx.work_dir)

    async def _settle_failure(self, entry: Inflight, exc: BaseException, elapsed: float) -> None:
        task, ctx = entry.task, entry.ctx
        reason = ctx.cancel_reason[0] if ctx.cancel_reason else None
        if isinstance(exc, LeaseLost) or reason in ("cancelled", "lost"):
            log.info("task_abandoned", reason=reason or "lease_lost", error=str(exc))
            return
        if reason == "shutdown" or isinstance(exc, asyncio.CancelledError):
            await self._report(lambda: self.store.release(task.task_id, task.lease_token or ""), "release")
            log.info("task_released", reason="shutdown")
            return
        if reason is None and self.upkeep.disk_fault(exc):  # not the task's fault: let a worker with room run it
            self.upkeep.note_disk_fault(str(exc))
            await self._report(lambda: self.store.release(task.task_id, task.lease_token or ""), "release")
            log.warning("task_released", reason="disk_full", error=str(exc))
            return
        if reason == "engine_died":
            message = "ComfyUI died while running this task; it is being restarted and the task retried"
            details: dict[str, Any] = {
                "error_type": "EngineUnavailable",
                "log_tail": self.supervisor.log_tail(40),
            }
            retryable = True
        else:
            message = str(exc) or type(exc).__name__
            details = dict(getattr(exc, "details", {}) or {})
            details["error_type"] = type(exc).__name__
            if not isinstance(exc, ComfyWorkerError):
                details["traceback"] = traceback.format_exception(exc)[-20:]
                message = f"unexpected {type(exc).__name__}: {message}"
            # an interrupt we did not ask for (someone pressed cancel in ComfyUI) is worth another try
            retryable = is_retryable(exc) or isinstance(exc, ExecutionInterrupted)
        details["elapsed_s"] = round(elapsed, 3)
        log.warning("task_failed", error=message, error_type=details["error_type"], retryable=retryable)
        await self._report(
            lambda: self.store.fail(task.task_id, task.lease_token or "", message, jsonable(details), retryable),
            "fail",
        )

    async def _report(self, call: Callable[[], Awaitable[Any]], what: str) -> None:
        """A final report, retried through short database outages; a lost lease ends it quietly. If the
        database stays away, the lease expires and another worker recovers the task."""
        for attempt in range(6):
            try:
                await call()
                return
            except LeaseLost as exc:
                log.info("report_rejected", what=what, error=str(exc))
                return
            except StoreUnavailable as exc:
                log.warning("report_failed", what=what, error=str(exc), attempt=attempt + 1)
                await asyncio.sleep(min(2**attempt * 0.5, 10))
            except StoreError as exc:
                log.error("report_refused", what=what, error=str(exc))
                return

    def _abandon(self, task_id: str, reason: str) -> None:
        entry = self._inflight.get(task_id)
        if entry is None or entry.ctx.cancel.is_set():
            return
        log.info("task_interrupting", task_id=task_id, reason=reason)
        entry.ctx.cancel_reason.append(reason)
        entry.ctx.cancel.set()

    def _on_engine_exit(self, returncode: int | None) -> None:
        if self._stop.is_set():
            return
        log.error("comfyui_died", returncode=returncode, inflight=len(self._inflight))
        self.client.invalidate_object_info()  # the restarted server may have other nodes or models
        for task_id in list(self._inflight):
            self._abandon(task_id, "engine_died")

    # --- background loops -----------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            meta = {
                **self._engine_meta,
                "healthy": self.supervisor.healthy,
                "comfy_restarts": self.supervisor.restarts,
                "inflight": len(self._inflight),
                **await self.upkeep.metadata(),
            }
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

    # --- shutdown -------------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for entry in list(self._inflight.values()):
            if not entry.ctx.started.is_set():
                self._abandon(entry.task.task_id, "shutdown")  # not on the GPU yet: hand it back now
        runners = [e.runner for e in self._inflight.values() if e.runner is not None]
        if runners:
            grace = None if self.exit_reason in ("drained", "idle") else self.settings.shutdown_grace_s
            log.info("shutdown_waiting", inflight=len(runners), grace_s=grace)
            all_done = asyncio.ensure_future(asyncio.wait(runners))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait({all_done, hurry}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
            all_done.cancel()
        for entry in list(self._inflight.values()):
            self._abandon(entry.task.task_id, "shutdown")
        runners = [e.runner for e in self._inflight.values() if e.runner is not None]
        if runners:
            _done, pending = await asyncio.wait(runners, timeout=15)
            for r in pending:
                r.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        try:
            await self.store.deregister_worker(self.worker_id)
            log.info("worker_deregistered")
        except StoreError as exc:
            log.warning("deregister_failed", error=str(exc))

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        with contextlib.suppress(Exception):
            await self.supervisor.stop(self.settings.shutdown_grace_s)
        with contextlib.suppress(Exception):
            await self.storage.aclose()
        with contextlib.suppress(Exception):
            await self.store.close()

    async def _engine_metadata(self) -> dict[str, Any]:
        try:
            stats = await self.client.system_stats()
        except EngineUnavailable:
            return {}
        system = stats.get("system") or {}
        devices = stats.get("devices") or [{}]
        dev = devices[0] if devices else {}
        return {
            k: v
            for k, v in {
                "gpu": dev.get("name"),
                "vram_total": dev.get("vram_total"),
                "comfyui_version": system.get("comfyui_version"),
                "python": system.get("python_version", "")[:20],
            }.items()
            if v
        }
