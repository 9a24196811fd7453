"""The engines of one worker and the GPU they share, as the daemon sees them.

:class:`EngineHost` holds the :class:`~comfy_worker.handlers.registry.Registry` (task type → handler → engine)
and the :class:`~comfy_worker.engine.arbiter.GpuArbiter`, and answers the daemon's questions:

* which task types may be claimed now (those whose engine is ``accepting``: not restarting, not given up);
* which claim preference to send (:func:`comfy_worker.affinity.claim_preference` for the engine and model that
  will hold the GPU once the tasks in flight have run);
* what the worker row says about the engines (``engines``: each one's health; ``gpu``: the arbiter's state);
* when engines start: a worker with one engine starts it with the worker (a bad COMFY_PATH, a taken port or
  a Wan2GP that cannot import stops the worker at once, as before); with several, each starts on its first task
  (an engine no task needs costs no memory). Settings are checked for every engine at worker start either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from comfy_worker.affinity import claim_preference
from comfy_worker.config import Settings
from comfy_worker.engine.arbiter import GpuArbiter
from comfy_worker.engine.base import COMFYUI, Engine
from comfy_worker.engine.gpumem import GpuProbe, detect
from comfy_worker.handlers.registry import Registry
from comfy_worker.logs import get_logger
from comfy_worker.models import ClaimPreference, Task

log = get_logger(__name__)
AUTO = object()  # probe=AUTO: detect NVML / nvidia-smi


class EngineHost:
    def __init__(self, settings: Settings, registry: Registry, *, probe: Any = AUTO) -> None:
        self.settings = settings
        self.registry = registry
        self.engines: dict[str, Engine] = dict(registry.engines)
        self._probe_arg = probe
        self.arbiter = GpuArbiter(self.engines, probe=None, free_timeout_s=settings.engine_free_timeout_s)

    # --- start / stop ---------------------------------------------------------------------------------------

    def configure(self) -> None:
        for engine in self.engines.values():
            engine.configure()

    async def start(self) -> None:
        """Find the GPU probe; start the only engine of a one-engine worker (see the module docstring)."""
        probe: GpuProbe | None = (
            await asyncio.to_thread(detect) if self._probe_arg is AUTO else self._probe_arg
        )
        self.arbiter.probe = probe
        if len(self.engines) == 1:
            await next(iter(self.engines.values())).start()

    async def stop(self, grace_s: float) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                await engine.stop(grace_s)

    def files_dirs(self) -> tuple[Path, ...]:
        """Folders engines write into that the upkeep sweeps (Wan2GP's output folder)."""
        return tuple(d for e in self.engines.values() if (d := getattr(e, "files_dir", None)) is not None)

    @property
    def comfy(self) -> Engine | None:
        return self.engines.get(COMFYUI)

    # --- claiming -------------------------------------------------------------------------------------------

    def claimable_types(self) -> list[str]:
        return sorted(t for t in self.registry.task_types if self.registry.engine_for(t).accepting)

    def model_for(self, task: Task) -> str | None:
        return getattr(self.registry.handlers[task.task_type], "model", None)

    def preference(self, inflight: list[Task]) -> ClaimPreference | None:
        """For the next claim: the engine (and model) that will hold the GPU after the tasks in flight (the last
        one claimed), else the one holding it now; None when nothing is or will be resident."""
        if inflight:
            last = inflight[-1]
            engine, model = self.registry.engine_for(last.task_type).name, self.model_for(last)
        else:
            engine, model = self.arbiter.next_resident()
        return claim_preference(
            engine=engine,
            model=model,
            task_engines=self.registry.task_engines(),
            task_models=self.registry.task_models(),
            max_wait_s=self.settings.engine_switch_max_wait_s,
        )

    # --- reporting ------------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Every engine can take tasks (a lazily started engine that has not started yet counts as able)."""
        return all(e.accepting for e in self.engines.values())

    def states(self) -> dict[str, Any]:
        """Each engine's state (stopped, ready, restarting, failed), for the logs."""
        return {name: e.health().get("state") for name, e in self.engines.items()}

    def metadata(self) -> dict[str, Any]:
        """For the worker row: each engine's health, the GPU's state, and (compatibility) ComfyUI's server figures
        (gpu, vram_total, comfyui_version) at the top level."""
        meta: dict[str, Any] = {
            "engines": {name: e.health() for name, e in self.engines.items()},
            "gpu_arbiter": self.arbiter.health(),
            "healthy": self.healthy,
        }
        comfy = self.comfy
        if comfy is not None:
            meta.update(getattr(comfy, "metadata", dict)())
            meta["comfy_restarts"] = getattr(comfy, "restarts", 0)
        return meta
