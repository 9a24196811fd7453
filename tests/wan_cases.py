"""Wan 2.2 builder cases shared by the offline (fixture) and live (ComfyUI 0.3.64) tests: defaults and the edge
parameters the issue names (LoRA on/off, ti2v with and without image, s2v longer than one window)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from typing import Any

from comfy_worker.builders import build_flf2v, build_i2v, build_s2v, build_t2v, build_ti2v
from comfy_worker.engine.workflow import MODEL_FOLDERS
from tests.fixture_files import OBJECT_INFO_0364

IMAGE, LAST, AUDIO = "cw_start.png", "cw_last.png", "cw_voice.wav"
LORA = [{"name": "my_style.safetensors", "strength": 0.7}]

CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "i2v-defaults": lambda: build_i2v(IMAGE, seed=1),
    "i2v-lora": lambda: build_i2v(IMAGE, "a dragon", use_lora=True, loras=[{**LORA[0], "model": "high"}], seed=2),
    "t2v-defaults": lambda: build_t2v(seed=3),
    "t2v-lora-832x480": lambda: build_t2v("a cat", use_lora=True, width=832, height=480, num_frames=49, seed=4),
    "ti2v-text-only": lambda: build_ti2v("a street musician", seed=5),
    "ti2v-with-image": lambda: build_ti2v("a street musician", image=IMAGE, loras=LORA, seed=6),
    "s2v-one-window": lambda: build_s2v(IMAGE, AUDIO, seed=7),
    "s2v-three-windows": lambda: build_s2v(IMAGE, AUDIO, num_frames=200, seed=8),
    "s2v-no-lora": lambda: build_s2v(IMAGE, AUDIO, use_lora=False, num_frames=154, seed=9),
    "flf2v-defaults": lambda: build_flf2v(IMAGE, LAST, seed=10),
    "flf2v-lora": lambda: build_flf2v(IMAGE, LAST, use_lora=True, steps=6, boundary_step=3, seed=11),
}


@cache
def _object_info() -> dict[str, Any]:
    return json.loads(OBJECT_INFO_0364.read_text())


def object_info_0364() -> dict[str, Any]:
    """A copy of the /object_info of ComfyUI 0.3.64 (its model lists are empty: no models installed)."""
    return copy.deepcopy(_object_info())


def with_models(object_info: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """``object_info`` as a server would report it with the models ``graph`` names installed."""
    info = copy.deepcopy(object_info)
    for node in graph.values():
        for name, value in node["inputs"].items():
            if (node["class_type"], name) not in MODEL_FOLDERS or not isinstance(value, str):
                continue
            spec = info[node["class_type"]]["input"]["required"][name]
            if isinstance(spec[0], list):
                spec[0] = sorted({*spec[0], value})
            else:
                spec[1]["options"] = sorted({*spec[1].get("options", []), value})
    return info
