"""One GPU, several engines: the grant that lets one engine at a time do GPU work, and the VRAM hand-over.

The daemon wraps each task's GPU stages (``submit`` + ``execute``) in ``async with arbiter.use(engine):``.

* **Same engine, many holders.** Tasks of the engine that holds the grant are granted at once, so ComfyUI's
  pipelining (task N+1 queued in ComfyUI while N runs) is unchanged.
* **First come, first served.** Requests wait in the order they are made (a task asks once it is prepared, so
  a task whose inputs are still downloading does not hold up one that is ready); a request for the engine that
  holds the grant does not jump a request for another engine that came first, so no task starves behind a
  stream of tasks for the resident engine (the claim preference already bounds how long that stream can be).
* **The hand-over.** When the head request wants engine B and engine A is *resident* (it was granted since its
  last free, so it may hold models), the arbiter waits until A has no holder, then calls ``A.free_memory()``
  and waits until the memory is back before granting B. "Back" is read, in order of preference, from the
  driver (:mod:`comfy_worker.engine.gpumem`: NVML or nvidia-smi; the device's used memory must fall by what A
  said it held, or stop falling), else from A's own figures (``A.free_memory()`` returns once they are down),
  else nothing can be measured (no GPU) and the free call is all there is. The wait is bounded by
  ENGINE_FREE_TIMEOUT_S; past it the switch goes on with a warning (an engine that then runs out of memory
  raises :class:`~comfy_worker.errors.EngineOutOfMemory`, which is retried).
* **Never under a running task.** ``free_memory`` is only ever called with no holder at all, and nothing is
  granted until the hand-over is over: no engine computes while another one frees.

Each hand-over is logged as ``engine_switch`` (from, to, seconds, bytes freed and how it was measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.engine.base import Engine
from comfy_worker.engine.gpumem import GpuProbe
from comfy_worker.errors import ExecutionInterrupted
from comfy_worker.logs import background_context, get_logger

log = get_logger(__name__)
SLACK_BYTES = 256 * 1024 * 1024  # device figures within this of the target count as there
POLL_S = 0.1
SETTLE_S = 0.5  # a device figure that has not fallen for this long has stopped falling


@dataclass(eq=False)
class _Request:
    engine: str
    model: str | None
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GpuArbiter:
    def __init__(
        self,
        engines: Mapping[str, Engine],
        *,
        probe: GpuProbe | None = None,
        free_timeout_s: float = 60.0,
    ) -> None:
        self.engines = dict(engines)
        self.probe = probe
        self.free_timeout_s = free_timeout_s
        self.holder: str | None = None  # the engine granted now (with ``holders`` tasks)
        self.holders = 0
        self.resident: str | None = None  # the engine that may hold GPU memory (granted since its last free)
        self.switches = 0
        self.last_switch: dict[str, Any] | None = None
        self._models: dict[str, str | None] = {}
        self._queue: deque[_Request] = deque()
        self._handover: asyncio.Task[None] | None = None

    # --- the grant ------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(
        self, engine: str, *, model: str | None = None, cancel: asyncio.Event | None = None
    ) -> AsyncIterator[None]:
        """Hold the GPU for ``engine`` (waiting for a hand-over if another engine is resident). ``cancel`` set
        while waiting: ExecutionInterrupted, nothing held."""
        if engine not in self.engines:
            raise KeyError(f"no engine {engine!r}")
        request = _Request(engine, model)
        self._queue.append(request)
        self._pump()
        try:
            await self._granted(request, cancel)
        except BaseException:
            self._withdraw(request)
            raise
        try:
            yield
        finally:
            self._release()

    async def _granted(self, request: _Request, cancel: asyncio.Event | None) -> None:
        if cancel is None:
            await asyncio.shield(request.granted)
            return
        stopper = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({request.granted, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if cancel.is_set():
            raise ExecutionInterrupted(f"stopped while waiting for the GPU (engine {request.engine})")

    def _withdraw(self, request: _Request) -> None:
        if request.granted.done() and not request.granted.cancelled():
            self._release()
            return
        request.granted.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(request)
        self._pump()

    def _release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.holder = None
        self._pump()

    def _pump(self) -> None:
        """Grant from the head of the queue while the rules allow (see the module docstring)."""
        while self._queue and self._handover is None:
            head = self._queue[0]
            if head.granted.done():  # withdrawn
                self._queue.popleft()
                continue
            if self.holders and self.holder != head.engine:
                return
            if not self.holders and self.resident not in (None, head.engine):
                self._handover = asyncio.create_task(self._hand_over(self.resident, head.engine),
                                                     name="gpu-handover", context=background_context())
                return
            self._queue.popleft()
            self.holder = self.resident = head.engine
            self.holders += 1
            self._models[head.engine] = head.model
            head.granted.set_result(None)

    # --- the hand-over --------------------------------------------------------------------------------------

    async def _hand_over(self, source: str, target: str) -> None:
        engine = self.engines[source]
        t0 = time.monotonic()
        report: dict[str, Any] = {"from_engine": source, "to_engine": target}
        try:
            device_before = await self._device_used()
            own_before = await engine.gpu_bytes()
            log.info("engine_freeing", engine=source, for_engine=target, gpu_bytes=own_before,
                     device_used_bytes=device_before)
            await asyncio.wait_for(engine.free_memory(), self.free_timeout_s)
            own_after = await engine.gpu_bytes()
            remaining = max(0.0, self.free_timeout_s - (time.monotonic() - t0))
            measured = await self._wait_back(device_before, own_before, own_after, remaining)
            report.update(measured)
            report["gpu_bytes_after"] = own_after
        except TimeoutError:
            report["timed_out"] = True
            log.warning("engine_free_timeout", engine=source, timeout_s=self.free_timeout_s,
                        hint="the next engine starts anyway; raise ENGINE_FREE_TIMEOUT_S if it runs out of memory")
        except Exception as exc:  # an engine that died holds nothing any more; one that failed to free is logged
            report["free_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("engine_free_failed", engine=source, error=report["free_error"])
        finally:
            report["seconds"] = round(time.monotonic() - t0, 3)
            self.resident = None
            self.switches += 1
            self.last_switch = report
            self._handover = None
            log.info("engine_switch", **report)
            self._pump()

    async def _device_used(self) -> int | None:
        if self.probe is None:
            return None
        return await asyncio.to_thread(self.probe.used_bytes)

    async def _wait_back(
        self, before: int | None, own_before: int | None, own_after: int | None, budget_s: float
    ) -> dict[str, Any]:
        """Wait until the device's used memory has fallen by what the engine released (or stopped falling)."""
        if before is None or self.probe is None:
            source = "engine" if own_after is not None else "none"
            freed = own_before - own_after if own_before is not None and own_after is not None else None
            return {"measured_by": source, "freed_bytes": freed}
        expected = (own_before - own_after) if own_before is not None and own_after is not None else None
        deadline = time.monotonic() + budget_s
        started = time.monotonic()
        lowest, lowest_at = before, started
        used: int | None = before
        while True:
            used = await self._device_used()
            now = time.monotonic()
            if used is None:
                break
            if expected is not None and used <= before - expected + SLACK_BYTES:
                break
            if used < lowest - SLACK_BYTES // 16:
                lowest, lowest_at = used, now
            if expected is None and now - started >= SETTLE_S and now - lowest_at >= SETTLE_S:
                break  # nothing to compare with: it has stopped falling
            if now >= deadline:
                raise TimeoutError
            await asyncio.sleep(POLL_S)
        return {
            "measured_by": self.probe.source,
            "device_used_before": before,
            "device_used_after": used,
            "freed_bytes": before - used if used is not None else None,
        }

    # --- what the daemon reads ------------------------------------------------------------------------------

    def next_resident(self) -> tuple[str | None, str | None]:
        """(engine, model) that will hold the GPU once what is granted or waiting has run: what claims prefer."""
        if self._queue:
            last = self._queue[-1]
            return last.engine, last.model
        if self.resident is None:
            return None, None
        model = self.engines[self.resident].current_model() or self._models.get(self.resident)
        return self.resident, model

    def health(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "resident": self.resident,
            "waiting": len(self._queue),
            "switches": self.switches,
            "last_switch": self.last_switch,
            "memory_probe": self.probe.source if self.probe else None,
        }
