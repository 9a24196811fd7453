"""The worker daemon: owns time. Claiming, pipelining, heartbeats, recovery, cancellation, shutdown.

One daemon serves every engine this worker has (ComfyUI, Wan2GP: :mod:`comfy_worker.engine_host`); each task
type runs on its handler's engine, which the task finds in its context.

Pipelining: up to ``1 + PREFETCH`` tasks hold a *slot* at once. A slot is taken before claiming and given
back when the task's ``execute`` stage ends, so while task N runs, task N+1 is claimed and its inputs fetched
(``prepare``, no GPU), and N's outputs upload (``finish``) while N+1 runs. A task's GPU stages (``submit`` +
``execute``) run under the GPU grant of its engine (:mod:`comfy_worker.engine.arbiter`): with N's engine, at
once (ComfyUI queues N+1 behind N and starts it the moment N ends); with another engine, once N's engine has
freed its memory. Each claim carries a preference for the task types of the engine (and model) that will hold
the GPU, bounded by ENGINE_SWITCH_MAX_WAIT_S. Heartbeats extend every lease we hold and tell us which tasks to
drop.

Shutdown (SIGTERM/SIGINT, a ``draining`` status, or ``--exit-when-idle``): stop claiming; release at once
what has not started on the GPU; let running work finish within SHUTDOWN_GRACE_S, then interrupt and release
it; deregister; stop the engines. A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker import __version__
from comfy_worker.config import Settings
from comfy_worker.engine.base import Engine
from comfy_worker.engine.comfyui import ComfyEngine
from comfy_worker.engine_host import AUTO, EngineHost
from comfy_worker.errors import (
    LeaseLost,
    StoreError,
    StoreUnavailable,
)
from comfy_worker.failures import decide
from comfy_worker.handlers.base import TaskContext
from comfy_worker.handlers.registry import ENGINE_TITLES, Registry
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


def work_root(settings: Settings, worker_id: str) -> Path:
    """This worker's scratch folder (WORK_DIR, else the system temp dir, then ``comfy-worker/<worker id>``)."""
    # "comfy-worker", not "comfy_worker": a directory named like the package would shadow it for scripts run in /tmp
    return Path(settings.work_dir or Path(tempfile.gettempdir()) / "comfy-worker") / worker_id


@dataclass
class Inflight:
    task: Task
    ctx: TaskContext
    engine: Engine
    runner: asyncio.Task[None] | None = None
    holds_slot: bool = True
    on_gpu: bool = False  # granted the GPU: its job is (or is about to be) in the engine


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        store: TaskStore,
        storage: Storage,
        registry: Registry,
        worker_id: str,
        exit_when_idle: bool = False,
        gpu_probe: Any = AUTO,
    ) -> None:
        """``registry``: task types → handlers → engines (cli.build_registry; TASK_TYPES already applied).
        ``gpu_probe``: how the GPU's used memory is read at engine switches (default: NVML / nvidia-smi when
        present; tests inject one)."""
        self.settings = settings
        self.store, self.storage = store, storage
        self.registry = registry
        self.handlers = registry.handlers
        self.host = EngineHost(settings, registry, probe=gpu_probe)
        self.worker_id = worker_id
        self.exit_when_idle = exit_when_idle
        self.task_types = registry.task_types
        self.work_root = work_root(settings, worker_id)
        comfy = self.host.comfy
        # the disk floor, each task's cleanup, orphan sweeps (never of what runs here)
        self.upkeep = Upkeep(
            settings,
            comfy=comfy if isinstance(comfy, ComfyEngine) else None,
            work_root=self.work_root,
            active=lambda: set(self._inflight),
            engine_dirs=self.host.files_dirs(),
        )
        self.fetch = settings_fetcher(settings, room=self.upkeep.room_for_input)
        self._slots = asyncio.Semaphore(1 + settings.prefetch)
        self._inflight: dict[str, Inflight] = {}
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: skip the grace period
        # held across each heartbeat call: deregistering takes it last, so no heartbeat lands after "stopped"
        self._heartbeat_lock = asyncio.Lock()
        self._deregistered = False
        self._draining = False
        self._models_report: dict[str, Any] = {}
        self._ending: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.exit_reason = ""
        for engine in registry.engines.values():
            if hasattr(engine, "on_exit"):  # ComfyUI: its prompts' waits must be interrupted when it dies
                engine.on_exit = functools.partial(self._on_engine_exit, engine.name)

    @property
    def supervisor(self) -> Any:
        """The ComfyUI engine's supervisor (None without ComfyUI)."""
        return getattr(self.host.comfy, "supervisor", None)

    @property
    def client(self) -> Any:
        """The ComfyUI engine's shared client (None without ComfyUI)."""
        return getattr(self.host.comfy, "client", None)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect everything and register; raises ComfyWorkerError with one clear line on failure."""
        self.host.configure()
        self.upkeep.configure()
        await self.store.connect()
        if self.settings.auto_migrate and self.store.name != "supabase":  # PostgREST cannot run DDL
            applied = await self.store.migrate()
            if applied:
                log.info("schema_migrated", applied=applied)
        else:
            await self.store.check_schema()  # SchemaMissing says how to apply sql/
        await self.storage.check()
        await self.host.start()  # a one-engine worker starts it now; several start on their first task
        await self.upkeep.start()
        self._models_report = await asyncio.to_thread(startup_report, self.settings)  # models_missing, …
        if self._models_report.get("models_missing"):
            log.warning("models_missing", files=self._models_report["models_missing"], fix="comfy-worker models sync")
        await self.store.register_worker(
            WorkerInfo(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                __version__,
                tuple(self.task_types),
                await self._metadata(),
            )
        )
        log.info(
            "worker_registered",
            task_types=self.task_types,
            prefetch=self.settings.prefetch,
            engines=self.host.states(),
            comfy_url=getattr(self.supervisor, "base_url", None),
            gpu_probe=self.host.arbiter.health()["memory_probe"],
        )

    async def _metadata(self) -> dict[str, Any]:
        return {**self._models_report, **self.host.metadata(), "inflight": len(self._inflight),
                **await self.upkeep.metadata()}

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

    # --- one task -------------------------------------------------------------------------------------------

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
        )
        if outcome.action == "abandon":
            log.info("task_abandoned", reason=outcome.reason, error=str(exc))
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
        await self._report(
            lambda: self.store.fail(
                task.task_id, task.lease_token or "", outcome.message, jsonable(details), outcome.retryable
            ),
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

    def _on_engine_exit(self, engine: str, returncode: int | None) -> None:
        """An engine whose process died under its tasks (ComfyUI): interrupt the tasks whose job was in it. Tasks
        still preparing or waiting for the GPU go on once it is back (their inputs are on disk, nothing of theirs
        was in the engine)."""
        if self._stop.is_set():
            return
        mine = [tid for tid, e in self._inflight.items() if e.engine.name == engine and e.on_gpu]
        log.error("engine_died", engine=engine, returncode=returncode, inflight=len(mine))
        for task_id in mine:
            self._abandon(task_id, "engine_died")

    # --- background loops -----------------------------------------------------------------------------------

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
        if self._ending:  # finished tasks still removing their files (ComfyUI must be up for that)
            await asyncio.wait(set(self._ending), timeout=15)
        async with self._heartbeat_lock:  # a heartbeat in flight would set the row back to idle after this
            self._deregistered = True
            try:
                await self.store.deregister_worker(self.worker_id)
                log.info("worker_deregistered")
            except StoreError as exc:
                log.warning("deregister_failed", error=str(exc))

    async def _close(self) -> None:
        await self.host.stop(self.settings.shutdown_grace_s)
        with contextlib.suppress(Exception):
            await self.storage.aclose()
        with contextlib.suppress(Exception):
            await self.store.close()
