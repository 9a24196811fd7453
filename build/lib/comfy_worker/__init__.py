"""comfy-worker: a SQL task queue, a ComfyUI worker daemon and a GPU orchestrator."""

from __future__ import annotations

__version__ = "0.1.0"
