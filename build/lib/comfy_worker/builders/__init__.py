"""Pure graph builders: task parameters → API-format ComfyUI graphs. No I/O, no engine calls.

``wan22`` builds the Wan 2.2 task types (``comfyui_i2v``, ``comfyui_t2v``, ``comfyui_ti2v``, ``comfyui_s2v``,
``comfyui_flf2v``); ``params`` holds each type's contract (accepted keys, ranges, the official templates'
defaults).
"""

from __future__ import annotations

from comfy_worker.builders.params import TASK_TYPES, Resolved, accepted_keys, resolve
from comfy_worker.builders.wan22 import (
    build,
    build_flf2v,
    build_i2v,
    build_resolved,
    build_s2v,
    build_t2v,
    build_ti2v,
)

__all__ = [
    "TASK_TYPES",
    "Resolved",
    "accepted_keys",
    "build",
    "build_flf2v",
    "build_i2v",
    "build_resolved",
    "build_s2v",
    "build_t2v",
    "build_ti2v",
    "resolve",
]
