"""ComfyUI as an :class:`~comfy_worker.engine.base.Engine`: today's supervisor (the process, or an attached
server at COMFY_URL) and the shared client (HTTP + one websocket), plus ComfyUI's housekeeping.

* **Tasks** get :meth:`ComfyEngine.scope`: a :class:`~comfy_worker.engine.scoped.TaskClient` (their own upload
  folder and output prefixes, one re-run for a missing output, run under the GPU grant when a guard is given).
* **Memory**: :meth:`ComfyEngine.free_memory` is ``POST /free {"unload_models": true, "free_memory": true}``.
  ComfyUI acts on it asynchronously (its prompt worker unloads every model and empties torch's cache when it
  next wakes), so the call then reads ``/system_stats`` until the memory torch reserves on the GPU
  (``torch_vram_total``) is down to :data:`RESIDUAL_BYTES` or stops falling. On a CPU device there is no GPU
  figure and nothing to wait for. :meth:`ComfyEngine.gpu_bytes` is the same figure.
* **Housekeeping**: :meth:`ComfyEngine.housekeeper` (ComfyUI's folders and per-task cleanup) for the daemon's
  upkeep.
* **Attached and gone**: with COMFY_URL the client's websocket drops tell the supervisor to check the server
  (:meth:`ComfySupervisor.connection_lost`); one that went away is ``unreachable`` (not ``accepting``: nothing is
  claimed for it) until it answers again, and :attr:`ComfyEngine.gone` says where and why, for the failure of
  the task it took down. One that does not answer when the worker starts is ``unreachable`` the same way (the
  worker starts and registers; its websocket is opened by the first prompt once it answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.engine.base import COMFYUI, GpuGuard
from comfy_worker.engine.client import ComfyClient
from comfy_worker.engine.housekeeping import ComfyHousekeeper, comfy_folders
from comfy_worker.engine.scoped import TaskClient
from comfy_worker.engine.supervisor import ComfySupervisor
from comfy_worker.errors import ComfyWorkerError, EngineStartupError, EngineUnavailable
from comfy_worker.logs import background_context, get_logger
from comfy_worker.models import Task

log = get_logger(__name__)
RESIDUAL_BYTES = 256 * 1024 * 1024  # what torch may keep reserved after /free and still count as freed
FREE_POLL_S = 0.1
FREE_SETTLE_S = 0.5  # the figure must stop falling for this long when it stays above RESIDUAL_BYTES
FREE_WAIT_S = 30.0


class ComfyEngine:
    """One ComfyUI for this worker (launched with COMFY_PATH or attached with COMFY_URL)."""

    name = COMFYUI

    def __init__(self, settings: Settings, supervisor: ComfySupervisor, client: ComfyClient) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.client = client
        self._housekeeper: ComfyHousekeeper | None = None
        self._started = False
        self._failed: str | None = None
        self._start_lock = asyncio.Lock()
        self._stats: dict[str, Any] = {}
        self._stats_read = False
        self._on_exit: Callable[[int | None], None] | None = None
        self._socket_task: asyncio.Task[None] | None = None
        if supervisor.attached:  # no process to watch: a dropped websocket is how its death shows
            client.on_disconnect = supervisor.connection_lost
            supervisor.on_reachable = self._open_socket

    @classmethod
    def from_settings(cls, settings: Settings, *, worker_id: str) -> ComfyEngine:
        supervisor = ComfySupervisor(settings)
        client = ComfyClient(supervisor.base_url, client_id=f"{worker_id}-{uuid.uuid4().hex[:8]}")
        return cls(settings, supervisor, client)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def configure(self) -> None:
        """ComfyUI's folders (ConfigError for a COMFY_*_DIR that is not one) and, when we launch it, its
        command (EngineStartupError naming COMFY_PATH / COMFY_PYTHON)."""
        self.housekeeper()
        if not self.supervisor.attached:
            self.supervisor.command()

    def housekeeper(self) -> ComfyHousekeeper:
        if self._housekeeper is None:
            folders = comfy_folders(self.settings)
            self._housekeeper = ComfyHousekeeper(self.client, folders, keep=self.settings.keep_comfy_files)
            self.client.output_dir = folders.output  # video hand-overs are read there, not downloaded
        return self._housekeeper

    @property
    def on_exit(self) -> Callable[[int | None], None] | None:
        return self._on_exit

    @on_exit.setter
    def on_exit(self, callback: Callable[[int | None], None] | None) -> None:
        self._on_exit = callback

        def exited(code: int | None) -> None:
            self.client.invalidate_object_info()  # the restarted server may have other nodes or models
            if callback is not None:
                callback(code)

        self.supervisor.on_exit = exited

    async def start(self) -> None:
        """Launch (or attach), open the websocket, read what the server is. Idempotent."""
        async with self._start_lock:
            if self._started:
                return
            try:
                await self.supervisor.start()
                if not self.supervisor.attached:
                    await self.client.connect()
                elif self.supervisor.healthy:  # attached: a socket that cannot open now is opened by the first prompt
                    with contextlib.suppress(EngineUnavailable):
                        await self.client.connect()
            except EngineStartupError as exc:
                self._failed = str(exc)
                raise
            self._started = True
            self._failed = None
        await self._read_stats()

    def _open_socket(self) -> None:
        """Attached, answering again (or for the first time): open the websocket now, so that the server going
        away again is seen even before a prompt is sent (a reader already reopening it is left to do so)."""
        if self._started and (self._socket_task is None or self._socket_task.done()):
            self._socket_task = asyncio.create_task(
                self._connect_quietly(), name="comfyui-socket", context=background_context()
            )

    async def _connect_quietly(self) -> None:
        with contextlib.suppress(EngineUnavailable):  # told to the supervisor by the client (on_disconnect)
            await self.client.connect()

    async def ensure_running(self) -> None:
        """Started (lazily: the first call starts it), and answering: after a crash, the supervisor restarts it
        with backoff (EngineStartupError when it gives up); attached, it waits for a server that is not answering
        (EngineGone after COMFY_STARTUP_TIMEOUT)."""
        if not self._started:
            await self.start()
        if not self.supervisor.healthy:
            await self.supervisor.ensure_running()
        if not self._stats_read:  # attached to a server that was not answering at start
            await self._read_stats()

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._socket_task is not None and not self._socket_task.done():
            self._socket_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._socket_task
        try:
            await self.client.aclose()
        finally:
            await self.supervisor.stop(grace_s)

    # --- state ----------------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def healthy(self) -> bool:
        return self._started and self.supervisor.healthy

    @property
    def accepting(self) -> bool:
        if self._failed is not None:
            return False
        return not self._started or self.supervisor.healthy

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    def log_tail(self, lines: int = 50) -> str:
        return self.supervisor.log_tail(lines)

    def current_model(self) -> str | None:
        return None  # ComfyUI holds whatever the last graph loaded

    @property
    def gone(self) -> dict[str, Any] | None:
        """Attached (COMFY_URL): where and why the server was last found gone (``url``, ``reason``, ``at``), also
        after it answers again; None for a child (its exit is its own story: the restart) or if it never went."""
        return self.supervisor.lost if self.supervisor.attached else None

    def health(self) -> dict[str, Any]:
        if self._failed:
            state = "failed"
        elif not self._started:
            state = "stopped"
        elif self.supervisor.healthy:
            state = "ready"
        else:
            state = "unreachable" if self.supervisor.unreachable else "restarting"
        out: dict[str, Any] = {
            "engine": self.name, "state": state, "healthy": self.healthy, "pid": self.pid,
            "restarts": self.restarts, "url": self.supervisor.base_url,
            **{k: v for k, v in self._stats.items() if v},
        }
        if self._failed:
            out["error"] = self._failed[:500]
        if state == "unreachable" and self.supervisor.lost:
            why = self.supervisor.lost["reason"]
            out["error"] = f"went away ({why})" if self.supervisor.answered else f"not answering yet ({why})"
        return out

    def metadata(self) -> dict[str, Any]:
        """gpu, vram_total, comfyui_version and python, once the server has been read (worker row, top level)."""
        return dict(self._stats)

    async def _read_stats(self) -> None:
        if not self.supervisor.healthy:
            return
        try:
            stats = await self.client.system_stats()
        except EngineUnavailable:
            return
        self._stats_read = True
        system = stats.get("system") or {}
        devices = stats.get("devices") or [{}]
        dev = devices[0] if devices else {}
        self._stats = {
            k: v
            for k, v in {
                "gpu": dev.get("name"),
                "vram_total": dev.get("vram_total"),
                "comfyui_version": system.get("comfyui_version"),
                "python": system.get("python_version", "")[:20],
            }.items()
            if v
        }

    # --- memory ---------------------------------------------------------------------------------------------

    async def gpu_bytes(self) -> int | None:
        """GPU memory ComfyUI's torch reserves (``/system_stats``), None on a CPU device or when it is down."""
        if not self.healthy:
            return None
        try:
            stats = await self.client.system_stats()
        except ComfyWorkerError:
            return None
        devices = stats.get("devices") or []
        dev = devices[0] if devices and isinstance(devices[0], dict) else {}
        if dev.get("type") != "cuda" or not isinstance(dev.get("torch_vram_total"), int):
            return None
        return int(dev["torch_vram_total"])

    async def free_memory(self) -> int | None:
        """``POST /free`` (unload every model, empty the caches), then wait (bounded) until ComfyUI's GPU figure
        is down; the bytes still held (None: no GPU figure). A ComfyUI that is not running holds nothing."""
        if not self.healthy:
            return None
        await self.client.free(unload_models=True, free_memory=True)
        held = await self.gpu_bytes()
        if held is None:
            log.info("comfyui_freed", gpu_bytes=None)
            return None
        deadline = time.monotonic() + FREE_WAIT_S
        lowest, since = held, time.monotonic()
        while held > RESIDUAL_BYTES and time.monotonic() < deadline:
            await asyncio.sleep(FREE_POLL_S)
            now_held = await self.gpu_bytes()
            if now_held is None:
                break
            held = now_held
            if held < lowest - 16 * 1024 * 1024:
                lowest, since = held, time.monotonic()
            elif held < lowest:
                lowest = held
            elif time.monotonic() - since >= FREE_SETTLE_S and held < RESIDUAL_BYTES * 8:
                break  # stopped falling at a small figure: what this ComfyUI keeps
        log.info("comfyui_freed", gpu_bytes=held)
        return held

    async def interrupt(self) -> None:
        await self.client.interrupt()

    # --- tasks ----------------------------------------------------------------------------------------------

    def scope(self, task: Task, cancel: asyncio.Event, *, guard: GpuGuard | None = None) -> TaskClient:
        return TaskClient(
            self.client,
            task.task_id,
            task.attempts,
            cancel=cancel,
            deadline_s=float(task.params.get("timeout_s") or self.settings.task_timeout_s),
            stall_s=float(task.params.get("stall_timeout_s") or self.settings.stall_timeout_s),
            guard=guard,
        )
