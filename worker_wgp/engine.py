"""The Wan2GP engine: runs :mod:`worker_wgp.child` in Wan2GP's Python, supervises it, and talks to it over
:mod:`worker_wgp.protocol`.

* **Lazy start**: the child starts on the first call that needs it (or :meth:`WanEngine.start`); start-up ends
  with the child's ``ready`` line (``WAN2GP_STARTUP_TIMEOUT``).
* **Supervision**: an unexpected exit fails whatever was in flight with :class:`EngineUnavailable`
  (retryable: the daemon requeues the task) and restarts the child with exponential backoff; after
  ``WAN2GP_RESTART_MAX`` failed starts in a row the engine reports :class:`EngineStartupError`. The child's
  stdout is the protocol; its stderr (everything Wan2GP prints) goes to the worker's log as
  ``wan2gp_output`` lines, the last ones kept for error details.
* **One generation at a time**; :meth:`WanEngine.free_memory` waits for a running one to end, so memory is
  never released under a running task. Cancelling (an event, or cancelling the awaiting coroutine) interrupts
  the generation in the child; a child that does not stop within ``cancel_grace_s`` is killed and restarted.
* **Errors** (:func:`error_for`): ``oom`` → :class:`EngineOutOfMemory` (retryable, see its docstring),
  ``invalid`` → :class:`EngineRejected` (permanent), ``failed`` → :class:`ExecutionFailed` (permanent),
  ``unavailable`` → :class:`EngineUnavailable`, ``cancelled`` → :class:`ExecutionInterrupted`.
* **As an engine of the daemon** (:class:`comfy_worker.engine.base.Engine`): ``accepting`` is False while the
  child restarts after a crash or once it gave up; ``gpu_bytes`` is what torch reserves in the child (None
  without a GPU); ``free_memory`` is the ``free`` request; a task's view (``scope``) is the engine itself:
  ``submit`` (start the child if needed, keep the request), ``follow`` (the generation, with progress and the
  task's deadline), ``outputs`` (the files moved out of Wan2GP's folder, hashed, as output items).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from comfy_worker.config import SECRET_FIELDS, Settings
from comfy_worker.engine.base import WAN2GP, GpuGuard
from comfy_worker.engine.outputs import OutputItem, content_type_of, kind_of
from comfy_worker.errors import (
    ComfyWorkerError,
    EngineError,
    EngineOutOfMemory,
    EngineRejected,
    EngineStartupError,
    EngineUnavailable,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionTimeout,
)
from comfy_worker.logs import background_context, get_logger
from comfy_worker.models import Task
from worker_wgp import protocol as p
from worker_wgp.process import ChildProcess
from worker_wgp.settings import WanEngineConfig, check_wan2gp_path

__all__ = ["GenerationOutput", "WanEngine", "WanEngineConfig", "check_wan2gp_path", "engine_from_settings",
           "error_for"]

log = get_logger(__name__)
CHILD_PROGRAM = Path(__file__).with_name("child.py")
TAIL_LINES = 200
ProgressCallback = Callable[[p.Progress], Awaitable[None] | None]
_Reply = TypeVar("_Reply", p.Freed, p.StatusReply, p.LoraDirReply)


@dataclass(frozen=True)
class GenerationOutput:
    files: tuple[Path, ...]
    model: str
    switched: bool
    load_s: float
    run_s: float
    memory: p.Memory


def error_for(event: p.Error, *, task: str = "") -> ComfyWorkerError:
    """The project exception for a child error event."""
    details = {"engine": "wan2gp", "kind": event.kind, **event.details}
    message = f"Wan2GP{f' ({task})' if task else ''}: {event.message}"
    if event.kind == "oom":
        return EngineOutOfMemory(message, details=details)
    if event.kind == "invalid":
        return EngineRejected(message, details=details)
    if event.kind == "failed":
        return ExecutionFailed(message, details=details)
    if event.kind in ("unavailable", "busy"):
        return EngineUnavailable(message, details=details)
    if event.kind == "cancelled":
        return ExecutionInterrupted(message, details=details)
    if event.kind == "internal":
        return ExecutionFailed(message, details=details, retryable=True)
    return EngineError(message, details=details)  # bad_request: our request was malformed, a bug


class WanEngine:
    """The parent side of the Wan2GP child. Async, one instance per worker."""

    name = WAN2GP

    def __init__(self, config: WanEngineConfig) -> None:
        self.config = config
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.restarts = 0
        self.loaded_model: str | None = None
        self.memory = p.Memory()
        self.version: str | None = None
        self.state = "stopped"  # stopped | starting | ready | restarting | failed | stopping
        self._child: ChildProcess | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[p.Event]] = {}
        self._progress: dict[str, ProgressCallback] = {}
        self._ready: asyncio.Future[p.Ready] | None = None
        self._ids = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self._gen_lock = asyncio.Lock()
        self._restart_task: asyncio.Task[None] | None = None
        self._failures_in_row = 0
        self._last_error = ""
        self._ready_at = 0.0
        self._stopping = False
        self._crashed = False  # exited unexpectedly and not back yet
        self._launched = False
        self._current: tuple[str, asyncio.Future[p.Event]] | None = None  # the running generation

    # --- state --------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state == "ready" and self._child is not None and self._child.alive

    @property
    def busy(self) -> bool:
        return self._gen_lock.locked()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None and self._child.alive else None

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(list(self.tail)[-lines:])

    @property
    def started(self) -> bool:
        return self._launched

    @property
    def accepting(self) -> bool:
        """Tasks may be claimed for it: not started yet (it starts on its first task) or running; not while it
        restarts after a crash, and not once it gave up (WAN2GP_RESTART_MAX)."""
        return self.state != "failed" and not self._crashed and not self._stopping

    @property
    def files_dir(self) -> Path:
        return self.config.output_dir

    def current_model(self) -> str | None:
        return self.loaded_model

    def health(self) -> dict[str, Any]:
        """What the worker row shows for this engine."""
        out = {
            "engine": self.name, "state": self.state, "healthy": self.running, "busy": self.busy,
            "model": self.loaded_model, "version": self.version, "pid": self.pid, "restarts": self.restarts,
            "memory": asdict(self.memory),
        }
        if self.state == "failed" and self._last_error:
            out["error"] = self._last_error[:500]
        return out

    def configure(self) -> None:
        """Nothing to check: WanEngineConfig.from_settings checked WAN2GP_PATH / WAN2GP_PYTHON."""

    # --- lifecycle ----------------------------------------------------------------------------------------

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

    # --- requests -----------------------------------------------------------------------------------------

    async def generate(
        self, model: str, settings: dict[str, Any], *, on_progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None, label: str = "",
    ) -> GenerationOutput:
        """Run one generation; raises the error the child reported, EngineUnavailable if it died meanwhile."""
        await self.ensure_running()
        async with self._gen_lock:
            await self.ensure_running()
            request = p.Generate(self._new_id("generate"), model, settings)
            if on_progress is not None:
                self._progress[request.id] = on_progress
            try:
                reply = await self._await_generation(request, cancel)
            finally:
                self._progress.pop(request.id, None)
        if isinstance(reply, p.Error):
            raise error_for(reply, task=label)
        assert isinstance(reply, p.Result), reply
        return GenerationOutput(tuple(Path(f) for f in reply.files), reply.model, reply.switched, reply.load_s,
                                reply.run_s, reply.memory)

    async def _await_generation(self, request: p.Generate, cancel: asyncio.Event | None) -> p.Event:
        future = await self._send(request)
        self._current = (request.id, future)
        try:
            if cancel is not None:
                cancelled = asyncio.create_task(cancel.wait())
                try:
                    await asyncio.wait({future, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    cancelled.cancel()
                if not future.done():
                    await self._interrupt(request.id, future)
            return await asyncio.shield(future)  # shielded: a cancelled caller must not cancel the reply slot
        except asyncio.CancelledError:
            if not future.done():  # the caller gave up (deadline, shutdown): stop the GPU work too
                await asyncio.shield(self._interrupt(request.id, future))
            raise
        finally:
            self._current = None

    async def _interrupt(self, target: str, future: asyncio.Future[p.Event]) -> None:
        log.info("wan2gp_cancelling", request=target)
        with contextlib.suppress(ComfyWorkerError, ConnectionError):
            await self._write(p.Cancel(self._new_id("cancel"), target))
        try:
            await asyncio.wait_for(asyncio.shield(future), self.config.cancel_grace_s)
        except TimeoutError:
            log.error("wan2gp_cancel_ignored", request=target, grace_s=self.config.cancel_grace_s)
            if self._child is not None:
                await self._child.terminate(5.0)  # _watch fails the future and restarts the child
        except ComfyWorkerError:
            pass

    async def free_memory(self) -> p.Memory:
        """Release the loaded model and the caches (after a running generation ends). Returns what the child
        holds afterwards; with no child running nothing is held."""
        async with self._gen_lock:
            if not self.running:
                return p.Memory()
            reply = await self._ask(p.Free(self._new_id("free")), p.Freed)
        log.info("wan2gp_freed", model=reply.model, rss_bytes=reply.memory.rss_bytes,
                 gpu_reserved_bytes=reply.memory.gpu_reserved_bytes)
        return reply.memory

    async def status(self) -> p.StatusReply:
        await self.ensure_running()
        return await self._ask(p.Status(self._new_id("status")), p.StatusReply)

    async def lora_dir(self, model: str) -> Path:
        """Wan2GP's LoRA folder for ``model`` (it creates it)."""
        await self.ensure_running()
        reply = await self._ask(p.LoraDir(self._new_id("lora_dir"), model), p.LoraDirReply)
        return Path(reply.path)

    # --- plumbing -----------------------------------------------------------------------------------------

    def _new_id(self, op: str) -> str:
        return f"{op}-{next(self._ids)}"

    async def _request(self, request: p.Request) -> p.Event:
        return await (await self._send(request))

    async def _ask(self, request: p.Request, expected: type[_Reply]) -> _Reply:
        """The reply to ``request``, of type ``expected``; the child's error event raised as its exception."""
        reply = await self._request(request)
        if isinstance(reply, p.Error):
            raise error_for(reply)
        assert isinstance(reply, expected), reply
        return reply

    async def _send(self, request: p.Request) -> asyncio.Future[p.Event]:
        future: asyncio.Future[p.Event] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            await self._write(request)
        except BaseException:
            self._pending.pop(request.id, None)
            raise
        return future

    async def _write(self, request: p.Request) -> None:
        if self._child is None:
            raise EngineUnavailable("the Wan2GP child is not running")
        await self._child.write(request)

    async def _dispatch(self, event: p.Event) -> None:
        if isinstance(event, p.Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(event)
            return
        memory = getattr(event, "memory", None)
        if memory is not None:
            self.memory = memory
        if isinstance(event, p.Progress):
            callback = self._progress.get(event.id)
            if callback is not None:
                with contextlib.suppress(Exception):
                    outcome = callback(event)
                    if asyncio.iscoroutine(outcome):
                        await outcome
            return
        if isinstance(event, p.Result):
            self.loaded_model = event.model
        elif isinstance(event, (p.Freed,)):
            self.loaded_model = None
        elif isinstance(event, p.StatusReply):
            self.loaded_model = event.model
        elif isinstance(event, p.Error) and event.kind == "oom":
            self.loaded_model = None  # the child released it
        if event.id is None:
            if isinstance(event, p.Error) and self._ready is not None and not self._ready.done():
                self._ready.set_exception(EngineStartupError(event.message, details={"log_tail": self.log_tail()}))
            else:
                log.error("wan2gp_error", kind=getattr(event, "kind", None), message=getattr(event, "message", None))
            return
        future = self._pending.pop(event.id, None)
        if future is not None and not future.done():
            future.set_result(event)

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

    # --- the Engine interface (comfy_worker.engine.base) -------------------------------------------------------

    async def gpu_bytes(self) -> int | None:
        """GPU memory torch reserves in the child (a fresh ``status`` when it is idle); None without a GPU, or
        when no child runs (then it holds nothing)."""
        if not self.running:
            return None
        if not self.busy:
            with contextlib.suppress(ComfyWorkerError, ConnectionError):
                await self.status()
        return self.memory.gpu_reserved_bytes

    async def interrupt(self) -> None:
        """Cancel the running generation, if any."""
        current = self._current
        if current is not None and not current[1].done():
            await self._interrupt(*current)

    def scope(self, task: Task, cancel: asyncio.Event, *, guard: GpuGuard | None = None) -> WanEngine:
        """A task's view of Wan2GP is the engine itself (one generation at a time, nothing per task)."""
        return self

    async def submit(self, job: Any) -> Any:
        """Start the child if it is not running (under the GPU grant), keep the job (a GenerationRequest: model
        and settings) for :meth:`follow`."""
        await self.ensure_running()
        return job

    async def follow(
        self, handle: Any, *, on_progress: ProgressCallback | None = None, cancel: asyncio.Event | None = None,
        deadline_s: float = 3600.0, stall_s: float = 0.0, label: str = "",
    ) -> GenerationOutput:
        """Run the generation; ExecutionTimeout after ``deadline_s`` (the child's generation is cancelled)."""
        try:
            async with asyncio.timeout(deadline_s):
                return await self.generate(handle.model, handle.settings, on_progress=on_progress, cancel=cancel,
                                           label=label)
        except TimeoutError:
            raise ExecutionTimeout(
                f"Wan2GP did not finish within {deadline_s:g} s (params.timeout_s / TASK_TIMEOUT_S)",
                details={"engine": self.name, "timeout_s": deadline_s}) from None

    async def outputs(self, followed: GenerationOutput, dest: Path) -> list[OutputItem]:
        """The generated files moved out of Wan2GP's folder into ``dest`` (nothing accumulates there), each with
        its size and SHA-256."""
        dest.mkdir(parents=True, exist_ok=True)
        items: list[OutputItem] = []
        for source in followed.files:
            if not source.is_file():
                raise ExecutionFailed(f"Wan2GP reported {source} but the file is not there",
                                      details={"engine": self.name, "file": str(source)})
            target = dest / source.name
            await asyncio.to_thread(shutil.move, source, target)
            items.append(await asyncio.to_thread(output_item, target))
        return items


def output_item(path: Path) -> OutputItem:
    """A generated file as an output item (with its size and SHA-256, which storage may trust instead of reading
    the file again)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return OutputItem(node_id="wan2gp", kind=kind_of("", path.name), filename=path.name, subfolder="",
                      type="output", path=path, bytes=size, sha256=digest.hexdigest(),
                      content_type=content_type_of(path.name))


def engine_from_settings(settings: Settings, output_dir: Path) -> WanEngine:
    """A WanEngine for these settings (ConfigError naming WAN2GP_PATH / WAN2GP_PYTHON when they are wrong)."""
    return WanEngine(WanEngineConfig.from_settings(settings, output_dir))



