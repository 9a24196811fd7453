"""Requests to the Wan2GP child over :mod:`worker_wgp.protocol`, for :class:`worker_wgp.engine.WanEngine`:
``generate`` (one at a time, with progress, cancellation and the interrupt that follows it), ``free``,
``status``, ``lora_dir``; the pending-reply bookkeeping (an id per request, a future per reply); the dispatch
of the child's events (replies, progress, the loaded model and memory they report); and :func:`error_for`,
the project exception for each child error kind.

:class:`Requests` is a mixin of :class:`~worker_wgp.engine.WanEngine`: the state it reads is the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from comfy_worker.errors import (
    ComfyWorkerError,
    EngineError,
    EngineOutOfMemory,
    EngineRejected,
    EngineStartupError,
    EngineUnavailable,
    ExecutionFailed,
    ExecutionInterrupted,
)
from comfy_worker.logs import get_logger
from worker_wgp import protocol as p

if TYPE_CHECKING:
    from worker_wgp.process import ChildProcess
    from worker_wgp.settings import WanEngineConfig

log = get_logger(__name__)
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


class Requests:
    """Talk to the child: requests out, events in."""

    config: WanEngineConfig
    loaded_model: str | None
    memory: p.Memory
    _child: ChildProcess | None
    _pending: dict[str, asyncio.Future[p.Event]]
    _progress: dict[str, ProgressCallback]
    _ready: asyncio.Future[p.Ready] | None
    _ids: itertools.count[int]
    _gen_lock: asyncio.Lock
    _current: tuple[str, asyncio.Future[p.Event]] | None

    if TYPE_CHECKING:  # the engine's other parts

        @property
        def running(self) -> bool: ...

        def log_tail(self, lines: int = 50) -> str: ...

        async def ensure_running(self) -> None: ...

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
