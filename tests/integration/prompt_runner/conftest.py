"""Fixtures for prompt_runner chains on the real test ComfyUI: the daemon harness and the CPU chain profile."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.integration.daemon.conftest import harness  # noqa: F401 - fixture re-export
from tests.integration.engine.conftest import comfyui_server  # noqa: F401 - fixture re-export

CHAIN_PROFILE = Path(__file__).parent / "chain" / "cw_test_chain.yaml"


def chain_params(**extra: Any) -> dict[str, Any]:
    """A 25-frame video in 9-frame chunks (3 chunks) with the CPU chain profile; unique video name."""
    return {
        "video_name": f"cw_chain_{uuid.uuid4().hex[:8]}",
        "total_frames": 25,
        "frames_per_chunk": 9,
        "positive_prompt": "a red square drifting over a blue sea",
        "negative_prompt": "blurry",
        "profile": CHAIN_PROFILE.stem,  # a name: the harness sets PROFILES_DIR to CHAIN_PROFILE's folder
        "seed": 7,
        **extra,
    }


async def comfy_history(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(f"{base_url}/history", params={"max_items": 10000})
        resp.raise_for_status()
        return dict(resp.json())


def latent_saves(history: dict[str, Any], video_name: str) -> dict[str, list[str]]:
    """chunk subfolder → prompt ids of the HIGH prompts (CWSaveLatentWithPath) ComfyUI ran for this video."""
    out: dict[str, list[str]] = {}
    for prompt_id, entry in history.items():
        graph = entry["prompt"][2]
        for node in graph.values():
            inputs = node.get("inputs") or {}
            if node.get("class_type") == "CWSaveLatentWithPath" and str(inputs.get("filename", "")).startswith(
                video_name
            ):
                out.setdefault(str(inputs["subfolder_name"]), []).append(prompt_id)
    return out
