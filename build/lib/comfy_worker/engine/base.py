"""What every engine is to the daemon: the :class:`Engine` protocol and the per-task view it hands handlers.

An engine is one generation backend on this worker's GPU (ComfyUI: :mod:`comfy_worker.engine.comfyui`;
Wan2GP: :mod:`worker_wgp.engine`). The daemon owns time and the GPU; an engine owns its process:

* **lifecycle** — :meth:`Engine.configure` (settings checked at worker start, nothing launched),
  :meth:`Engine.start` (launch or attach; idempotent), :meth:`Engine.ensure_running` (restart with backoff after
  a crash; :class:`~comfy_worker.errors.EngineStartupError` when it gives up), :meth:`Engine.stop`;
* **state** — :attr:`Engine.accepting` (may tasks be claimed for it now: not restarting, not given up),
  :meth:`Engine.health` (what the worker row shows), :meth:`Engine.current_model` (the model it holds, when it
  knows: Wan2GP does; ComfyUI holds whatever the last graph loaded, so None);
* **memory** — :meth:`Engine.free_memory` (release models and caches; called by the GPU arbiter only while
  no task runs on the GPU) and :meth:`Engine.gpu_bytes` (the GPU memory the engine's process holds by its own
  counters, None when it cannot tell, e.g. without a GPU);
* **tasks** — :meth:`Engine.scope` gives the handler its per-task view (:class:`TaskEngine`): ``submit`` (queue
  the job; runs under the GPU grant), ``follow`` (progress until done), ``outputs`` (the files, local),
  ``interrupt``. ComfyUI's view is :class:`~comfy_worker.engine.scoped.TaskClient`; Wan2GP's is its engine.

Optional: ``on_exit``, which the daemon sets on engines that offer it (ComfyUI): called with the exit code when
the engine's process dies unexpectedly, so the daemon interrupts that engine's tasks (a dead ComfyUI's prompts
just go quiet). Engines whose in-flight work fails by itself when their process dies (Wan2GP) need none.
``files_dir``: a folder the engine writes into that the daemon's upkeep sweeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from comfy_worker.engine.outputs import OutputItem
from comfy_worker.models import Task

COMFYUI = "comfyui"
WAN2GP = "wan2gp"

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]
GpuGuard = Callable[[], AbstractAsyncContextManager[Any]]  # the GPU grant, for GPU work outside execute


@runtime_checkable
class Engine(Protocol):
    name: str

    def configure(self) -> None:
        """Check the engine's settings without launching anything (ConfigError / EngineStartupError naming
        the variable); the daemon calls it at worker start so a bad setting stops the worker at once."""
        ...

    async def start(self) -> None: ...

    async def ensure_running(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...

    @property
    def started(self) -> bool:
        """The engine has been started (lazily on its first task, or at worker start)."""
        ...

    @property
    def accepting(self) -> bool:
        """Tasks may be claimed for it: not started yet (it starts on its first task), or running; False while
        it restarts after a crash and once it gave up."""
        ...

    def health(self) -> dict[str, Any]: ...

    def current_model(self) -> str | None: ...

    async def free_memory(self) -> Any:
        """Release models and caches (returns once the engine says they are released; what it returns is the
        engine's own report). Never called while a task runs on the GPU."""
        ...

    async def gpu_bytes(self) -> int | None: ...

    async def interrupt(self) -> None: ...

    def scope(self, task: Task, cancel: asyncio.Event, *, guard: GpuGuard | None = None) -> Any:
        """This engine as one task sees it (a :class:`TaskEngine`). ``guard()``: the task's GPU grant, for GPU
        work the engine would start outside the task's execute stage (ComfyUI's re-run of a missing output)."""
        ...

    def log_tail(self, lines: int = 50) -> str: ...


class TaskEngine(Protocol):
    """An engine as one task sees it (what :meth:`Engine.scope` returns)."""

    async def submit(self, job: Any) -> Any: ...

    async def follow(
        self, handle: Any, *, on_progress: ProgressFn | None, cancel: asyncio.Event, deadline_s: float,
        stall_s: float,
    ) -> Any: ...

    async def outputs(self, followed: Any, dest: Path) -> list[OutputItem]: ...

    async def interrupt(self, handle: Any = None) -> None: ...
