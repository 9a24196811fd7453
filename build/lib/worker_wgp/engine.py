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

This module holds the :class:`WanEngine` facade (its state, health and the ``Engine`` interface); its parts
are mixins beside it: :mod:`worker_wgp.supervision` (the child process: start, watch, restart, stop) and
:mod:`worker_wgp.rpc` (the protocol requests and the dispatch of the child's events).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import shutil
from collections import deque
from dataclasses import asdict
from pathlib import Path, PurePath
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.engine.base import WAN2GP, GpuGuard
from comfy_worker.engine.outputs import OutputItem, content_type_of, kind_of
from comfy_worker.errors import ComfyWorkerError, ExecutionFailed, ExecutionTimeout
from comfy_worker.inputs import safe_filename
from comfy_worker.models import Task
from worker_wgp import protocol as p
from worker_wgp.process import ChildProcess
from worker_wgp.rpc import GenerationOutput, ProgressCallback, Requests, error_for
from worker_wgp.settings import WanEngineConfig, check_wan2gp_path
from worker_wgp.supervision import Supervision

__all__ = ["GenerationOutput", "WanEngine", "WanEngineConfig", "check_wan2gp_path", "engine_from_settings",
           "error_for"]

TAIL_LINES = 200


class WanEngine(Supervision, Requests):
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
        taken: set[str] = set()
        for source in followed.files:
            if not source.is_file():
                raise ExecutionFailed(f"Wan2GP reported {source} but the file is not there",
                                      details={"engine": self.name, "file": str(source)})
            target = dest / output_name(source.name, taken)
            taken.add(target.name)
            await asyncio.to_thread(shutil.move, source, target)
            items.append(await asyncio.to_thread(output_item, target))
        return items


# Wan2GP's own name for a generation (wgp.py, no ``output_filename`` set): the time, the seed and up to 100 bytes
# of the prompt, with spaces and most punctuation left in: "2026-12-07-13h03m22s_seed1_a red fox runs.mp4"
_WAN2GP_NAME = re.compile(
    r"(?P<stem>\d{4}-\d{2}-\d{2}-\d{2}h\d{2}m\d{2}s_seed\d+)(?:_.*)?(?P<ext>\.[A-Za-z0-9]{1,8})", re.S)


def output_name(name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The name a generated file is stored under (it becomes the last part of the object key and of its URL).
    Wan2GP names a video after its prompt; the prompt has no place in a key or a URL (spaces, quotes, any
    script, whatever the user wrote), so the time and seed stay and the prompt goes:
    ``2026-12-07-13h03m22s_seed1.mp4``. Any other name is made safe (``safe_filename``); a name already
    ``taken`` by this task's outputs gets ``_2``, ``_3``…"""
    m = _WAN2GP_NAME.fullmatch(name)
    base = PurePath(f"{m['stem']}{m['ext']}" if m else safe_filename(name, "output"))
    candidate, n = base.name, 1
    while candidate in taken:
        n += 1
        candidate = f"{base.stem}_{n}{base.suffix}"
    return candidate


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


