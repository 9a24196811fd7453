"""ComfyClient against the real (older) test ComfyUI: outputs, validation, errors, interrupts, reconnects."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from comfy_worker.engine import ComfyClient, events, find_media_inputs, is_ui_format, ui_to_api, validate
from comfy_worker.errors import (
    EngineUnavailable,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionTimeout,
    WorkflowInvalid,
)
from comfy_worker.handlers.prompt_runner.join import count_frames

from .conftest import ComfyServer

pytestmark = pytest.mark.comfyui


def image(w: int = 64, h: int = 48, n: int = 1, color: int = 0x3366CC) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": n, "color": color}}


def slow(seconds: float, steps: int) -> dict:
    return {
        "1": {"class_type": "CWSlow", "inputs": {"seconds": seconds, "steps": steps}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


async def wait_idle(client: ComfyClient, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            running, pending = await client.queue()
            if not running and not pending:
                return
            await asyncio.sleep(0.1)


async def test_outputs_of_every_kind(comfy: ComfyClient, comfyui_server: ComfyServer, tmp_path: Path) -> None:
    wf = {
        "1": image(n=4),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cwt/still"}},
        "3": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "cwt/anim",
                "fps": 6.0,
                "lossless": False,
                "quality": 50,
                "method": "fastest",
            },
        },
        "4": {
            "class_type": "CWSaveVideoMP4",
            "inputs": {"images": ["1", 0], "fps": 8.0, "filename_prefix": "cwt/clip"},
        },
        "5": {
            "class_type": "CWSaveAudioWav",
            "inputs": {"seconds": 0.2, "frequency": 440.0, "filename_prefix": "cwt/tone"},
        },
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/cwt"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    validate(wf, await comfy.object_info())
    seen: list[events.Event] = []
    pid = await comfy.queue_prompt(wf)
    history = await comfy.wait(pid, on_event=seen.append, deadline_s=120, stall_s=60)

    assert {type(e) for e in seen} >= {events.ExecutionStart, events.Executing, events.Executed}
    assert all(e.prompt_id == pid for e in seen)
    items = await comfy.download_outputs(history, tmp_path / "out")
    by_node = {}
    for item in items:
        by_node.setdefault(item.node_id, []).append(item)
    assert set(by_node) == {"2", "3", "4", "5", "7"}  # PreviewImage (temp) skipped
    assert [i.kind for i in by_node["2"]] == ["image"] * 4
    assert by_node["3"][0].kind == "image" and by_node["3"][0].content_type == "image/webp"
    assert by_node["4"][0].kind == "video" and by_node["4"][0].content_type == "video/mp4"
    assert by_node["5"][0].kind == "audio" and by_node["5"][0].filename.endswith(".wav")
    assert by_node["7"][0].kind == "latent" and by_node["7"][0].subfolder == "latents"
    for item in items:
        on_server = comfyui_server.output_dir / item.subfolder / item.filename
        data = item.path.read_bytes()
        assert data == on_server.read_bytes()
        assert item.bytes == len(data) > 0
        assert item.sha256 == hashlib.sha256(data).hexdigest()
    assert await count_frames(by_node["4"][0].path, decode=True) == 4

    with_temp = await comfy.download_outputs(history, tmp_path / "all", include_temp=True)
    assert {i.node_id for i in with_temp if i.type == "temp"} == {"8"}


async def test_upload_video_and_latent_then_load_them(comfy: ComfyClient, tmp_path: Path) -> None:
    src = tmp_path / "in clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=32x24:rate=5",
            "-frames:v",
            "6",
            "-pix_fmt",
            "yuv420p",
            str(src),
        ],
        check=True,
    )
    name = await comfy.upload_file(src, subfolder="cwt")
    assert name == "cwt/in clip.mp4"
    wf = {
        "1": {"class_type": "CWLoadVideo", "inputs": {"video": name, "max_frames": 0}},
        "2": {
            "class_type": "CWSaveVideoMP4",
            "inputs": {"images": ["1", 0], "fps": 5.0, "filename_prefix": "cwt/copy"},
        },
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 2}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/src"}},
    }
    validate(wf, await comfy.object_info())  # cached object_info predates the upload: file inputs pass
    hist = await comfy.wait(await comfy.queue_prompt(wf), deadline_s=120)
    items = await comfy.download_outputs(hist, tmp_path / "out")
    video = next(i for i in items if i.node_id == "2")
    latent = next(i for i in items if i.node_id == "4")
    assert video.kind == "video" and video.bytes > 0

    latent_name = await comfy.upload_file(latent.path)
    assert latent_name == latent.filename
    wf2 = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": latent_name}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/copy"}},
    }
    hist2 = await comfy.wait(await comfy.queue_prompt(wf2), deadline_s=120)
    (copy,) = await comfy.download_outputs(hist2, tmp_path / "out2")
    assert copy.kind == "latent" and copy.bytes > 0


async def test_unknown_node_rejected_by_validate(comfy: ComfyClient) -> None:
    """validate() must catch this before queueing: the older server answers 500 (a KeyError in its
    validate_prompt), current ones a 400 ``invalid_prompt``."""
    wf = {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }
    with pytest.raises(WorkflowInvalid) as info:
        validate(wf, await comfy.object_info())
    assert "node 1: node type NoSuchNode is not installed (custom node pack missing?)" in str(info.value)
    assert "links to node 9, which does not exist" in str(info.value)
    assert [p["node_id"] for p in info.value.details["problems"]] == ["1", "3"]


async def test_bad_enum_keeps_node_errors(comfy: ComfyClient) -> None:
    wf = {
        "1": image(),
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bogus",
                "width": 8,
                "height": 8,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cwt/x"}},
    }
    with pytest.raises(WorkflowInvalid, match="'bogus' is not allowed"):
        validate(wf, await comfy.object_info())
    with pytest.raises(WorkflowInvalid) as info:
        await comfy.queue_prompt(wf)
    node_errors = info.value.details["node_errors"]
    assert "2" in node_errors
    assert node_errors["2"]["class_type"] == "ImageScale"
    assert info.value.details["error_type"] == "prompt_outputs_failed_validation"
    assert info.value.retryable is False


async def test_runtime_error_raises_execution_failed(comfy: ComfyClient) -> None:
    wf = {
        "1": image(),
        "2": {"class_type": "CWRaise", "inputs": {"message": "kaboom-42", "images": ["1", 0]}},
    }
    pid = await comfy.queue_prompt(wf)
    with pytest.raises(ExecutionFailed) as info:
        await comfy.wait(pid, deadline_s=60)
    d = info.value.details
    assert (d["node_id"], d["node_type"], d["exception_message"]) == ("2", "CWRaise", "kaboom-42")
    assert d["exception_type"].endswith("ValueError")
    assert any("kaboom-42" in line or "raise" in line for line in d["traceback"])
    assert info.value.retryable is False


async def test_cancel_interrupts_running_prompt(comfy: ComfyClient) -> None:
    cancel = asyncio.Event()
    progress: list[events.Progress] = []

    def on_event(e: events.Event) -> None:
        if isinstance(e, events.Progress):
            progress.append(e)
            cancel.set()

    pid = await comfy.queue_prompt(slow(60, 600))
    with pytest.raises(ExecutionInterrupted):
        await comfy.wait(pid, on_event=on_event, cancel=cancel, deadline_s=120)
    assert progress and progress[0].node == "1" and progress[0].max == 600
    await wait_idle(comfy)  # the 60 s prompt really stopped
    hist = await comfy.history(pid)
    assert hist is not None and hist.status_str == "error"


async def test_deadline_interrupts_and_times_out(comfy: ComfyClient) -> None:
    pid = await comfy.queue_prompt(slow(60, 600))
    with pytest.raises(ExecutionTimeout) as info:
        await comfy.wait(pid, deadline_s=2.0)
    assert info.value.retryable is True
    await wait_idle(comfy)


async def test_stall_timer_interrupts_silent_prompt(comfy: ComfyClient) -> None:
    pid = await comfy.queue_prompt(slow(60, 1))  # one step: no progress event for 60 s
    with pytest.raises(ExecutionTimeout, match="no progress"):
        await comfy.wait(pid, deadline_s=120, stall_s=2.0)
    await wait_idle(comfy)


async def test_interrupt_pending_prompt_leaves_running_one(comfy: ComfyClient) -> None:
    first = await comfy.queue_prompt(slow(30, 300))
    second = await comfy.queue_prompt(slow(30, 300))
    await comfy.interrupt(second)
    running, pending = await comfy.queue()
    assert second not in pending and second not in running
    assert first in running or first in pending
    await comfy.interrupt(first)
    with pytest.raises(ExecutionInterrupted):
        await comfy.wait(first, deadline_s=60)
    await wait_idle(comfy)


async def test_dropped_websocket_completion_still_seen(comfy: ComfyClient) -> None:
    dropped = asyncio.Event()

    async def on_event(e: events.Event) -> None:
        if isinstance(e, events.Progress) and not dropped.is_set():
            dropped.set()
            await comfy.drop_connection()

    pid = await comfy.queue_prompt(slow(2.0, 20))
    hist = await comfy.wait(pid, on_event=on_event, deadline_s=60)
    assert dropped.is_set()
    assert hist.status_str == "success"


async def test_socket_taken_over_completion_found_via_history(comfyui_server: ComfyServer) -> None:
    """Events silently stop reaching our socket (another socket took our clientId): polling /history still
    finds the completion."""
    client = ComfyClient(comfyui_server.base_url, poll_interval_s=0.5)
    thief = ComfyClient(comfyui_server.base_url, client_id=client.client_id)
    try:
        await client.connect()
        pid = await client.queue_prompt(slow(1.0, 5))
        await thief.connect()
        hist = await client.wait(pid, deadline_s=60)
        assert hist.status_str == "success"
    finally:
        await thief.aclose()
        await client.aclose()


async def test_ui_format_workflow_converted_and_run(comfy: ComfyClient, tmp_path: Path) -> None:
    ui = {
        "last_node_id": 5,
        "nodes": [
            {
                "id": 1,
                "type": "EmptyImage",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                "widgets_values": [40, 32, 2, 255],
            },
            {
                "id": 2,
                "type": "Reroute",
                "mode": 0,
                "inputs": [{"name": "", "type": "*", "link": 1}],
                "outputs": [{"name": "", "type": "IMAGE", "links": [2]}],
            },
            {
                "id": 3,
                "type": "ImageBlur",
                "mode": 0,
                "inputs": [
                    {"name": "image", "type": "IMAGE", "link": 2},
                    {"name": "blur_radius", "type": "INT", "link": 3, "widget": {"name": "blur_radius"}},
                ],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}],
                "widgets_values": [1, 0.5],
            },
            {
                "id": 4,
                "type": "PrimitiveNode",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "INT", "type": "INT", "links": [3], "widget": {"name": "blur_radius"}}],
                "widgets_values": [3, "fixed"],
            },
            {
                "id": 5,
                "type": "SaveImage",
                "mode": 0,
                "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
                "widgets_values": ["cwt/ui"],
            },
            {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["hello"]},
        ],
        "links": [
            [1, 1, 0, 2, 0, "IMAGE"],
            [2, 2, 0, 3, 0, "IMAGE"],
            [3, 4, 0, 3, 1, "INT"],
            [4, 3, 0, 5, 0, "IMAGE"],
        ],
    }
    assert is_ui_format(ui)
    info = await comfy.object_info()
    api = ui_to_api(ui, info)
    assert api["3"]["inputs"] == {"image": ["1", 0], "blur_radius": 3, "sigma": 0.5}
    validate(api, info)
    hist = await comfy.wait(await comfy.queue_prompt(api), deadline_s=60)
    items = await comfy.download_outputs(hist, tmp_path)
    assert [(i.node_id, i.kind) for i in items] == [("5", "image"), ("5", "image")]


async def test_wan_like_high_low_chain(comfy: ComfyClient, tmp_path: Path) -> None:
    wf = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "2": image(32, 32),
        "3": {
            "class_type": "CWFakeSampler",
            "inputs": {"latent": ["1", 0], "image": ["2", 0], "frames": 5, "seed": 7, "denoise": 1.0},
        },
        "4": {
            "class_type": "CWFakeSampler",
            "inputs": {"latent": ["3", 0], "image": ["2", 0], "frames": 5, "seed": 8, "denoise": 0.5},
        },
        "5": {
            "class_type": "CWSaveVideoMP4",
            "inputs": {"images": ["4", 1], "fps": 5.0, "filename_prefix": "cwt/chain"},
        },
        "6": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["4", 0], "filename_prefix": "latents/chain"},
        },
    }
    validate(wf, await comfy.object_info())
    items = await comfy.download_outputs(await comfy.wait(await comfy.queue_prompt(wf), deadline_s=60), tmp_path)
    assert sorted(i.kind for i in items) == ["latent", "video"]


async def test_media_urls_found_in_live_loader_inputs(comfy: ComfyClient) -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "https://example.invalid/a.png"}},
        "2": {
            "class_type": "CWLoadVideo",
            "inputs": {"video": "http://example.invalid/v.mp4", "max_frames": 0},
        },
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "https://not-a-loader"},
        },
    }
    found = find_media_inputs(wf, await comfy.object_info())
    assert [(m.node_id, m.field) for m in found] == [("1", "image"), ("2", "video")]


async def test_unreachable_server_is_engine_unavailable() -> None:
    from tests.comfy_server import free_port

    async with ComfyClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(EngineUnavailable):
            await client.system_stats()
        with pytest.raises(EngineUnavailable):
            await client.queue_prompt({"1": image()})
