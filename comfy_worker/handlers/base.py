"""What a handler is: a task type's work, split into stages so the daemon can pipeline them.

* ``prepare`` — everything before the GPU: parse params, fetch inputs, upload them to ComfyUI, validate, and
  queue the prompt. Runs for task N+1 while task N executes, so ComfyUI starts N+1 the moment N ends.
* ``execute`` — wait for the GPU work. The daemon frees the next claim slot when it returns.
* ``finish`` — download outputs and upload them to storage; overlaps with the next task's ``execute``.

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
from comfy_worker.engine import ComfyClient
from comfy_worker.inputs import Fetcher
from comfy_worker.models import Task
from comfy_worker.pathsafe import path_key
from comfy_worker.storage import Storage

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class TaskContext:
    """What a handler gets for one task."""

    task: Task
    settings: Settings
    client: ComfyClient
    storage: Storage
    fetch: Fetcher
    work_dir: Path
    progress: ProgressFn  # throttled; never raises
    checkpoint: ProgressFn  # durable; raises LeaseLost when the task is no longer ours
    cancel: asyncio.Event  # set when the task must stop (cancelled, lease lost, shutdown)
    cancel_reason: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set when ComfyUI starts executing it

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

    async def prepare(self, ctx: TaskContext) -> Any: ...

    async def execute(self, ctx: TaskContext, prepared: Any) -> Any: ...

    async def finish(self, ctx: TaskContext, executed: Any) -> HandlerResult: ...
