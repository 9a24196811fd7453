"""ComfyUI behind a narrow interface: supervise the process, submit a graph, follow events, fetch outputs.

Handlers use only what is exported here; nothing else in the project speaks HTTP to ComfyUI.
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
