"""Which engine and which handler run each task type on this worker: what the daemon reads.

``cli`` (the composition root) builds the engines from settings — ComfyUI when COMFY_PATH or COMFY_URL is set,
Wan2GP when WAN2GP_PATH is — and every handler it knows; :func:`build_registry` keeps the task types whose engine
is configured, narrowed by TASK_TYPES. Each handler names its engine (``handler.engine``, ComfyUI when absent)
and, where the engine reports its loaded model, the model its type runs by default (``handler.model``), which
the claim preference uses (:func:`comfy_worker.affinity.claim_preference`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfy_worker.engine.base import COMFYUI, WAN2GP, Engine
from comfy_worker.errors import ConfigError

ENGINE_SETTINGS = {COMFYUI: "COMFY_PATH or COMFY_URL", WAN2GP: "WAN2GP_PATH"}
ENGINE_TITLES = {COMFYUI: "ComfyUI", WAN2GP: "Wan2GP"}


def engine_of(handler: Any) -> str:
    return str(getattr(handler, "engine", COMFYUI))


@dataclass
class Registry:
    engines: dict[str, Engine]
    handlers: dict[str, Any]  # task type -> handler (comfy_worker.handlers.base.Handler)

    @property
    def task_types(self) -> list[str]:
        return sorted(self.handlers)

    def engine_for(self, task_type: str) -> Engine:
        return self.engines[engine_of(self.handlers[task_type])]

    def task_engines(self) -> dict[str, str]:
        return {t: engine_of(h) for t, h in self.handlers.items()}

    def task_models(self) -> dict[str, str]:
        return {t: str(h.model) for t, h in self.handlers.items() if getattr(h, "model", None)}


def build_registry(
    engines: Mapping[str, Engine], handlers: Mapping[str, Any], task_types: tuple[str, ...] | list[str] = ()
) -> Registry:
    """The task types this worker claims: every handler whose engine is configured, or TASK_TYPES when set (a
    type nobody handles, or one whose engine is not configured, stops the worker naming TASK_TYPES). Engines no
    claimed type needs are left out (never started)."""
    if not engines:
        raise ConfigError(
            "COMFY_PATH",
            "not set, and neither is COMFY_URL nor WAN2GP_PATH: set COMFY_PATH (or COMFY_URL) to run ComfyUI tasks "
            "and/or WAN2GP_PATH to run Wan2GP tasks",
        )
    if task_types:
        unknown = [t for t in task_types if t not in handlers]
        if unknown:
            known = ", ".join(sorted(handlers))
            raise ConfigError("TASK_TYPES", f"{unknown[0]!r} is not a task type this worker knows; known: {known}")
        missing = [t for t in task_types if engine_of(handlers[t]) not in engines]
        if missing:
            engine = engine_of(handlers[missing[0]])
            raise ConfigError(
                "TASK_TYPES",
                f"{missing[0]!r} runs on {ENGINE_TITLES.get(engine, engine)}, which is not configured: set "
                f"{ENGINE_SETTINGS.get(engine, engine)}, or leave {missing[0]!r} out",
            )
        chosen = {t: handlers[t] for t in task_types}
    else:
        chosen = {t: h for t, h in handlers.items() if engine_of(h) in engines}
    used = {engine_of(h) for h in chosen.values()}
    return Registry({name: e for name, e in engines.items() if name in used}, chosen)
