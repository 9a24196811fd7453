"""Every builder case's graph is accepted by a real ComfyUI 0.3.64 /prompt (placeholder model files, real input
files), then interrupted or deleted before it does any work worth the name."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_worker.engine import ComfyClient, problems
from comfy_worker.errors import WorkflowInvalid
from tests.integration.wan.conftest import Comfy0364, ffmpeg_media
from tests.wan_cases import AUDIO, CASES, IMAGE, LAST

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def media(comfyui_0364: Comfy0364) -> None:
    for name in (IMAGE, LAST):
        ffmpeg_media(comfyui_0364.input_dir / name, "image")
    ffmpeg_media(comfyui_0364.input_dir / AUDIO, "audio", seconds=2)


async def _accepted(comfy: ComfyClient, graph: dict[str, Any]) -> str:
    prompt_id = await comfy.queue_prompt(graph)
    await comfy.interrupt(prompt_id)  # placeholders cannot run: stop it (pending → deleted, running → interrupted)
    return prompt_id


@pytest.mark.parametrize("case", sorted(CASES))
async def test_graph_accepted_by_comfyui_0364(
    case: str, comfyui_0364: Comfy0364, comfy64: ComfyClient, media: None
) -> None:
    graph = CASES[case]()
    comfyui_0364.place_models(graph)
    comfy64.invalidate_object_info()
    live = await comfy64.object_info()
    assert problems(graph, live, empty_model_lists="missing") == []  # our validator agrees with the server
    assert await _accepted(comfy64, graph)


async def test_server_rejects_what_our_validator_rejects(comfyui_0364: Comfy0364, comfy64: ComfyClient) -> None:
    """The control: a graph naming a model that is not there is refused by both, so acceptance above means something."""
    graph = CASES["t2v-defaults"]()
    comfyui_0364.place_models(graph)
    graph["1"]["inputs"]["clip_name"] = "not_there.safetensors"
    comfy64.invalidate_object_info()
    found = problems(graph, await comfy64.object_info(), empty_model_lists="missing")
    assert [p["node_id"] for p in found] == ["1"] and "models/text_encoders/" in found[0]["message"]
    with pytest.raises(WorkflowInvalid, match=r"not_there\.safetensors"):
        await comfy64.queue_prompt(graph)
