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

This module assembles the :class:`Daemon` (its engines, upkeep, input fetcher, pipeline slots), starts and
registers it, runs it, and shuts it down. Its parts: :mod:`.claiming` (the claim loop), :mod:`.inflight`
(one task's lifecycle: ``Inflight``, prepare / submit / execute / finish, the outcome, the cleanup hand-off,
interruption) and :mod:`.heartbeat` (heartbeats, lease loss, draining, stale recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any

from comfy_worker import __version__
from comfy_worker.config import Settings
from comfy_worker.daemon.claiming import ClaimLoop
from comfy_worker.daemon.heartbeat import Heartbeat
from comfy_worker.daemon.inflight import Inflight, TaskLifecycle
from comfy_worker.daemon.warm import WarmStart
from comfy_worker.engine.comfyui import ComfyEngine
from comfy_worker.engine_host import AUTO, EngineHost
from comfy_worker.errors import StoreError
from comfy_worker.handlers.registry import Registry
from comfy_worker.inputs import settings_fetcher
from comfy_worker.logs import get_logger
from comfy_worker.models import WorkerInfo
from comfy_worker.models_manifest import startup_report
from comfy_worker.storage import Storage
from comfy_worker.store.base import TaskStore
from comfy_worker.upkeep import Upkeep
from comfy_worker.webhooks import WebhookDispatcher

__all__ = ["Daemon", "Inflight", "work_root"]

log = get_logger(__name__)


def work_root(settings: Settings, worker_id: str) -> Path:
    """This worker's scratch folder (WORK_DIR, else the system temp dir, then ``comfy-worker/<worker id>``)."""
    # "comfy-worker", not "comfy_worker": a directory named like the package would shadow it for scripts run in /tmp
    return Path(settings.work_dir or Path(tempfile.gettempdir()) / "comfy-worker") / worker_id


class Daemon(ClaimLoop, TaskLifecycle, Heartbeat):
    """The worker daemon (this module's docstring); its claim loop, tasks in flight and heartbeats are mixins."""

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
        self.webhooks = WebhookDispatcher(settings, store, worker_id)  # its own loop, beside the task work
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
        self.warm = WarmStart(settings, self.task_types)  # WARM_PREFETCH / WARM_UP (daemon/warm.py)
        self.warm.watch(self.supervisor)  # WARM_PREFETCH_START=torch follows ComfyUI's boot
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
        await self.warm.start_prefetch()  # reads model files into the page cache while ComfyUI boots
        await self.store.connect()
        if self.settings.auto_migrate and self.store.name != "supabase":  # PostgREST cannot run DDL
            applied = await self.store.migrate()
            if applied:
                log.info("schema_migrated", applied=applied)
        else:
            await self.store.check_schema()  # SchemaMissing says how to apply sql/
        await self.storage.check()
        await self.host.start()  # a one-engine worker starts it now; several start on their first task
        self.warm.engine_ready()
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

    async def run(self) -> int:
        """Run until stopped; returns the process exit code (0 for every orderly stop)."""
        self._install_signal_handlers()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._stale_loop(), name="stale"),
            asyncio.create_task(self.upkeep.sweep_loop(), name="sweep"),
            asyncio.create_task(self.webhooks.run(), name="webhooks"),
            asyncio.create_task(self.warm.warm_up(self.host.comfy, self.store), name="warm_up"),
        ]
        try:
            await self._claim_loop()
            await self._shutdown()
            await self.webhooks.drain(min(self.settings.webhook_timeout_s, self.settings.shutdown_grace_s))
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
        self.warm.shutdown()  # a warm-up prompt still in ComfyUI is interrupted

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)

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
        self.warm.stop()
        await self.host.stop(self.settings.shutdown_grace_s)
        with contextlib.suppress(Exception):
            await self.storage.aclose()
        with contextlib.suppress(Exception):
            await self.store.close()
