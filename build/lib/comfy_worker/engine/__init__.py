"""Engines: the interface every engine implements (:mod:`.base`), the GPU they share (:mod:`.arbiter`,
:mod:`.gpumem`), and ComfyUI behind it (:mod:`.comfyui`): supervise the process, submit a graph, follow events,
fetch outputs, free its memory.

Handlers use only what is exported here (and a task's engine scope); nothing else in the project speaks HTTP to
ComfyUI.
"""

from __future__ import annotations

from comfy_worker.engine import events
from comfy_worker.engine.client import ComfyClient, History
from comfy_worker.engine.outputs import OutputItem, list_outputs
from comfy_worker.engine.supervisor import ComfySupervisor
from comfy_worker.engine.workflow import (
    MediaInput,
    find_media_inputs,
    is_ui_format,
    problems,
    set_input,
    ui_to_api,
    validate,
)

__all__ = [
    "ComfyClient",
    "ComfySupervisor",
    "History",
    "MediaInput",
    "OutputItem",
    "events",
    "find_media_inputs",
    "is_ui_format",
    "list_outputs",
    "problems",
    "set_input",
    "ui_to_api",
    "validate",
]
