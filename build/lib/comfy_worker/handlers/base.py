"""What a handler is: a task type's work, split into stages so the daemon can pipeline them.

* ``prepare`` — everything that needs no GPU: parse params, fetch inputs, upload them to ComfyUI, validate.
  Runs for task N+1 while task N executes (on any engine), so the next task's inputs are ready when the GPU is.
* ``submit`` (optional) — hand the job to the engine (ComfyUI: queue the prompt). Runs under the daemon's GPU
  grant for the handler's engine: with the same engine as N, at once (ComfyUI starts N+1 the moment N ends);
  with another engine, after N's engine has freed the GPU's memory.
* ``execute`` — wait for the GPU work (still under the grant). The daemon frees the next claim slot when it
  returns.
* ``finish`` — download outputs and upload them to storage; overlaps with the next task's ``execute``.

A handler names the engine it runs on (``engine``: ``"comfyui"`` when absent, ``"wan2gp"``) and finds it in
``ctx.engine``: that engine as this task sees it (:meth:`comfy_worker.engine.base.Engine.scope`; for ComfyUI a
:class:`~comfy_worker.engine.scoped.TaskClient`, also reachable as ``ctx.client``).

A handler never touches the queue: it reports progress and checkpoints through the context, raises
:mod:`comfy_worker.errors` exceptions, and the daemon completes or fails the task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from comfy_worker.config import Settings
from comfy_worker.errors import StoreUnavailable
from comfy_worker.inputs import Fetcher
from comfy_worker.logs import get_logger
from comfy_worker.models import Task
from comfy_worker.pathsafe import path_key
from comfy_worker.storage import Storage, UploadJournal

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]
UPLOADS_KEY = "resumable_uploads"  # the checkpoint key under which TaskContext.uploads is kept
log = get_logger(__name__)


@dataclass
class TaskContext:
    """What a handler gets for one task."""

    task: Task
    settings: Settings
    engine: Any  # the handler's engine as this task sees it (Engine.scope); ComfyUI: a TaskClient
    storage: Storage
    fetch: Fetcher
    work_dir: Path
    progress: ProgressFn  # throttled; never raises
    checkpoint: ProgressFn  # durable; raises LeaseLost when the task is no longer ours
    cancel: asyncio.Event  # set when the task must stop (cancelled, lease lost, shutdown)
    cancel_reason: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set when ComfyUI starts executing it
    # Resumable uploads in flight, kept in the task's checkpoint beside the handler's own state (see
    # __post_init__): pass it to storage.upload so an upload cut short by a crash resumes on the next attempt.
    uploads: UploadJournal = field(init=False)

    def __post_init__(self) -> None:
        saved = dict(self.task.checkpoint or {})
        entries = saved.pop(UPLOADS_KEY, None)
        state: list[dict[str, Any]] = [saved]  # the handler's last saved state (restored until it saves)
        durable = self.checkpoint

        def merged(handler_state: dict[str, Any]) -> dict[str, Any]:
            pending = self.uploads.entries
            return {**handler_state, UPLOADS_KEY: pending} if pending else dict(handler_state)

        async def checkpoint(handler_state: dict[str, Any]) -> None:
            state[0] = dict(handler_state)
            await durable(merged(state[0]))

        async def persist(_entries: dict[str, Any]) -> None:
            try:
                await durable(merged(state[0]))
            except StoreUnavailable as exc:  # best effort: the upload goes on, only its resume point is not saved
                log.warning("upload_journal_not_saved", error=str(exc))

        self.uploads = UploadJournal(entries if isinstance(entries, dict) else None, persist)
        self.checkpoint = checkpoint

    @property
    def client(self) -> Any:
        """ComfyUI handlers' name for ``engine`` (a :class:`~comfy_worker.engine.scoped.TaskClient`)."""
        return self.engine

    @property
    def attempt(self) -> int:
        return self.task.attempts

    @property
    def task_key(self) -> str:
        """The task id as one safe path component (:func:`comfy_worker.pathsafe.path_key`): task ids are
        user-chosen text, so every folder, subfolder or storage path named after a task uses this."""
        return path_key(self.task.task_id)

    def storage_path(self, filename: str) -> str:
        return f"{self.task.task_type}/{self.task_key}/{filename}"


@dataclass(frozen=True)
class HandlerResult:
    """What the daemon records with ``complete_task``."""

    result: dict[str, Any]
    output_url: str | None = None


class Handler(Protocol):
    task_type: str
    engine: str  # the engine it runs on ("comfyui" when a handler does not say)

    async def prepare(self, ctx: TaskContext) -> Any: ...

    async def submit(self, ctx: TaskContext, prepared: Any) -> Any: ...  # optional: the daemon skips it when absent

    async def execute(self, ctx: TaskContext, prepared: Any) -> Any: ...

    async def finish(self, ctx: TaskContext, executed: Any) -> HandlerResult: ...
