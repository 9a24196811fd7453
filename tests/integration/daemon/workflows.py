"""Small API-format workflows built from core nodes and tests/comfy_nodes (cheap on the CPU)."""

from __future__ import annotations

import uuid
from typing import Any


def tag() -> str:
    """A unique filename prefix, so ComfyUI's cache never serves a previous test's result."""
    return uuid.uuid4().hex[:8]


def many_outputs(t: str | None = None) -> dict[str, Any]:
    t = t or tag()
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 4, "color": 255},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"img_{t}"}},
        "3": {
            "class_type": "CWSaveVideoMP4",
            "inputs": {"images": ["1", 0], "fps": 8.0, "filename_prefix": f"vid_{t}"},
        },
        "4": {
            "class_type": "CWSaveAudioWav",
            "inputs": {"seconds": 0.1, "frequency": 440.0, "filename_prefix": f"aud_{t}"},
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/lat_{t}"},
        },
    }


def slow(seconds: float, t: str | None = None) -> dict[str, Any]:
    t = t or tag()
    return {
        "1": {"class_type": "CWSlow", "inputs": {"seconds": seconds, "steps": max(2, int(seconds * 10))}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"slow_{t}"}},
    }


def video_in(t: str | None = None) -> dict[str, Any]:
    t = t or tag()
    return {
        "1": {"class_type": "CWLoadVideo", "inputs": {"video": "placeholder.mp4", "max_frames": 0}},
        "2": {
            "class_type": "CWSaveVideoMP4",
            "inputs": {"images": ["1", 0], "fps": 8.0, "filename_prefix": f"copy_{t}"},
        },
    }


def raises(message: str = "boom from test") -> dict[str, Any]:
    return {"1": {"class_type": "CWRaise", "inputs": {"message": message}}}
