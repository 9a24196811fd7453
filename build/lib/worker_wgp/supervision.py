"""The Wan2GP child's lifecycle, for :class:`worker_wgp.engine.WanEngine`: launch :mod:`worker_wgp.child` in
Wan2GP's Python (secrets kept out of its environment) and wait for its ``ready`` line; start it lazily and
restart it with exponential backoff after a crash (``WAN2GP_RESTART_MAX``); fail what was in flight when it
exits; stop it (``shutdown`` request, then SIGTERM / SIGKILL).

:class:`Supervision` is a mixin of :class:`~worker_wgp.engine.WanEngine`: the state it reads is the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from comfy_worker.config import SECRET_FIELDS
from comfy_worker.errors import ComfyWorkerError, EngineStartupError, EngineUnavailable
from comfy_worker.logs import background_context, get_logger
from worker_wgp import protocol as p
from worker_wgp.process import ChildProcess

if TYPE_CHECKING:
    from worker_wgp.settings import WanEngineConfig

log = get_logger(__name__)
CHILD_PROGRAM = Path(__file__).with_name("child.py")


class Supervision:
    """Start, watch, restart and stop the child."""

    config: WanEngineConfig
    tail: deque[str]
    restarts: int
    loaded_model: str | None
    memory: p.Memory
    version: str | None
    state: str
    _child: ChildProcess | None
    _watcher: asyncio.Task[None] | None
    _pending: dict[str, asyncio.Future[p.Event]]
    _ready: asyncio.Future[p.Ready] | None
    _start_lock: asyncio.Lock
    _restart_task: asyncio.Task[None] | None
    _failures_in_row: int
    _last_error: str
    _ready_at: float
    _stopping: bool
    _crashed: bool
    _launched: bool

    if TYPE_CHECKING:  # the engine's other parts

        @property
        def running(self) -> bool: ...

        def log_tail(self, lines: int = 50) -> str: ...

        def _new_id(self, op: str) -> str: ...

        async def _request(self, request: p.Request) -> p.Event: ...

        async def _dispatch(self, event: p.Event) -> None: ...

    async def start(self) -> None:
        """Start the child and wait for ``ready`` (no-op when running); EngineStartupError otherwise."""
        self._stopping = False
        async with self._start_lock:
            if not self.running:
                try:
                    await self._launch()
                except EngineStartupError as exc:
                    self._last_error = str(exc)
                    raise

    async def ensure_running(self) -> None:
        """Return when the child is ready, starting it when it is not: after a failed start or a crash, with
        exponential backoff; EngineStartupError after WAN2GP_RESTART_MAX failures in a row."""
        if self.running:
            return
        async with self._start_lock:
            while not self.running:
                if self._stopping:
                    raise EngineUnavailable("Wan2GP is stopping")
                failures = self._failures_in_row
                if failures > self.config.restart_max:
                    self.state = "failed"
                    raise EngineStartupError(
                        f"Wan2GP failed {failures} times in a row (WAN2GP_RESTART_MAX={self.config.restart_max}); "
                        f"last: {self._last_error}", details={"log_tail": self.log_tail()})
                if failures:
                    delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (failures - 1))
                    log.warning("wan2gp_restarting", attempt=failures, delay_s=delay)
                    self.state = "restarting"
                    await asyncio.sleep(delay)
                try:
                    await self._launch()
                except EngineStartupError as exc:
                    self._last_error = str(exc)
                    log.error("wan2gp_start_failed", error=str(exc), failures=self._failures_in_row)

    async def _launch(self) -> None:
        cfg = self.config
        argv = [cfg.python, str(CHILD_PROGRAM), "--output-dir", str(cfg.output_dir), "--wan2gp-args", cfg.args]
        env = {k: v for k, v in os.environ.items() if k.lower() not in SECRET_FIELDS}
        env.update({"WAN2GP_PATH": str(cfg.wan2gp_path), "PYTHONUNBUFFERED": "1", **cfg.env})
        self.state = "starting"
        self.loaded_model = None
        log.info("wan2gp_starting", argv=argv, wan2gp_path=str(cfg.wan2gp_path))
        started = time.monotonic()
        self._ready = asyncio.get_running_loop().create_future()
        try:
            child = await ChildProcess.launch(argv, cwd=cfg.wan2gp_path, env=env, tail=self.tail,
                                              on_event=self._dispatch)
        except OSError as exc:
            self._failures_in_row += 1
            raise EngineStartupError(f"cannot launch the Wan2GP child ({argv[0]}): {exc}") from exc
        self._child = child
        self._watcher = asyncio.create_task(self._watch(child), name="wan2gp-watch",
                                            context=background_context())
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), cfg.startup_timeout_s)
        except TimeoutError:
            self._failures_in_row += 1
            await child.terminate(5.0)
            raise EngineStartupError(
                f"Wan2GP did not report ready within {cfg.startup_timeout_s:.0f} s (WAN2GP_STARTUP_TIMEOUT)",
                details={"log_tail": self.log_tail()}) from None
        except EngineStartupError:
            self._failures_in_row += 1
            await child.terminate(5.0)  # it said why and is exiting: reap it
            raise
        self.version, self.loaded_model, self.memory = ready.wan2gp_version, ready.model, ready.memory
        self._ready_at = time.monotonic()
        self._launched = True
        self._crashed = False
        self.state = "ready"
        log.info("wan2gp_ready", pid=child.pid, version=ready.wan2gp_version,
                 startup_s=round(self._ready_at - started, 2))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Ask the child to shut down (it releases the model), then SIGTERM / SIGKILL. Idempotent."""
        self._stopping = True
        if self._restart_task is not None and not self._restart_task.done():
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        child = self._child
        if child is not None and child.alive:
            self.state = "stopping"
            with contextlib.suppress(ComfyWorkerError, TimeoutError, ConnectionError):
                await asyncio.wait_for(self._request(p.Shutdown(self._new_id("shutdown"))), grace_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.exited(), grace_s)
            await child.terminate(grace_s)
        if self._watcher is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._watcher, 5.0)
        self.state = "stopped"
        self.loaded_model = None

    async def _watch(self, child: ChildProcess) -> None:
        code = await child.exited()
        expected = self._stopping or self.state == "stopping"
        last = self.tail[-1] if self.tail else "(no output)"
        error = EngineUnavailable(
            f"the Wan2GP child exited with code {code}{'' if expected else ' unexpectedly'}; last line: {last}",
            details={"engine": "wan2gp", "exit_code": code, "log_tail": self.log_tail()},
        )
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineStartupError(
                f"the Wan2GP child exited with code {code} during start-up; last line: {last}",
                details={"exit_code": code, "log_tail": self.log_tail()}))
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        self.loaded_model = None
        if child is not self._child or expected or self.state != "ready":
            return
        self._crashed = True
        uptime = time.monotonic() - self._ready_at
        log.error("wan2gp_exited", exit_code=code, uptime_s=round(uptime, 1), log_tail=self.log_tail(20))
        self._last_error = str(error)
        self.state = "restarting"
        if uptime >= self.config.min_uptime_s:
            self._failures_in_row = 0
        self._failures_in_row += 1
        self.restarts += 1
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.create_task(self._restart(), name="wan2gp-restart",
                                                     context=background_context())

    async def _restart(self) -> None:
        with contextlib.suppress(EngineStartupError, EngineUnavailable):
            await self.ensure_running()
