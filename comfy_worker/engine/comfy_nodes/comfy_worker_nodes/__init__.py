"""comfy-worker's side inside ComfyUI: loaded by ComfyUI as a custom node package from the folder the worker's
supervisor registers (``--extra-model-paths-config``, comfy_worker/engine/frames.py); never imported by the worker,
and it imports nothing of the worker's (ComfyUI may run in a python of its own).

- ``ComfyWorkerSaveVideo`` (video.py): VIDEO_ENCODE=worker's hand-over node.
- ``COMFY_WORKER_GC_FREEZE=1`` in ComfyUI's environment (the supervisor sets it for COMFY_GC_FREEZE=true): the
  garbage-collection freezer of gc_freeze.py, so ComfyUI's full collection after each prompt stops walking the
  models' objects while the GPU waits.
"""

from __future__ import annotations

import os

from .gc_freeze import install_from_env
from .video import ComfyWorkerSaveVideo

NODE_CLASS_MAPPINGS = {"ComfyWorkerSaveVideo": ComfyWorkerSaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"ComfyWorkerSaveVideo": "Save Video (the worker encodes)"}

install_from_env(os.environ)
