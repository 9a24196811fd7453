"""The comfyui_* handlers against a real ComfyUI 0.3.64: media fetched (base64, storage) and uploaded, the graph
built and accepted by /prompt; s2v sized from its audio; missing models fail at once, naming each file and the
models/ folder it belongs in — handler-level, and through the real daemon and Postgres queue."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.builders import build
from comfy_worker.config import load_settings
from comfy_worker.engine import ComfyClient
from comfy_worker.errors import WorkflowInvalid
from comfy_worker.handlers.base import TaskContext
from comfy_worker.handlers.comfy import Prepared
from comfy_worker.handlers.wan import WanHandler
from comfy_worker.inputs import settings_fetcher
from comfy_worker.models import NewTask, Task, TaskStatus
from comfy_worker.storage import LocalStorage
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.wan.conftest import Comfy0364, ffmpeg_media
from tests.template_parity import template

pytestmark = pytest.mark.comfyui


async def _noop(_: dict[str, Any]) -> None:
    return None


@pytest.fixture
async def make_ctx(
    comfyui_0364: Comfy0364, comfy64: ComfyClient, tmp_path: Path
) -> AsyncIterator[Any]:
    storage = LocalStorage(tmp_path / "storage")
    settings = load_settings({"COMFY_URL": comfyui_0364.base_url, "LOCAL_STORAGE_DIR": str(tmp_path / "storage")})

    def make(task_type: str, params: dict[str, Any]) -> TaskContext:
        task = Task(str(uuid.uuid4()), task_type, params, TaskStatus.RUNNING, attempts=1)
        return TaskContext(
            task=task, settings=settings, engine=comfy64, storage=storage, fetch=settings_fetcher(settings),
            work_dir=tmp_path / task.task_id, progress=_noop, checkpoint=_noop, cancel=asyncio.Event(),
        )  # fmt: skip

    make.storage = storage  # type: ignore[attr-defined]
    yield make


async def _prepare_and_stop(ctx: TaskContext, comfy: ComfyClient) -> Prepared:
    """prepare alone (no GPU): the graph is built, its inputs uploaded and validated, nothing is queued."""
    comfy.invalidate_object_info()
    prepared = await WanHandler(ctx.task.task_type).prepare(ctx)
    assert prepared.prompt_id == "" and await comfy.queue() == ([], [])
    return prepared


async def test_i2v_from_base64_image_is_accepted(make_ctx: Any, comfyui_0364: Comfy0364, tmp_path: Path) -> None:
    png = ffmpeg_media(tmp_path / "start.png", "image").read_bytes()
    params = {"image_base64": base64.b64encode(png).decode(), "prompt": "a red square", "num_frames": 30, "seed": -1}
    comfyui_0364.place_models(build("comfyui_i2v", {"image": "x.png"}))  # the default models
    ctx = make_ctx("comfyui_i2v", params)
    prepared = await _prepare_and_stop(ctx, ctx.client)
    loader = next(n for n in prepared.workflow.values() if n["class_type"] == "LoadImage")
    uploaded = comfyui_0364.input_dir / loader["inputs"]["image"]
    assert loader["inputs"]["image"].startswith(f"comfy_worker/{ctx.task.task_id}/") and uploaded.read_bytes() == png
    info = prepared.info
    assert info["num_frames"] == 29 and "num_frames 30 rounded to 29 (Wan renders 4k+1 frames)" in info["notes"]
    assert isinstance(info["seed"], int) and f"seed drawn at random: {info['seed']}" in info["notes"]
    high = next(n for n in prepared.workflow.values() if n["_meta"]["title"].startswith("Sampler HIGH"))
    assert high["inputs"]["noise_seed"] == info["seed"]


async def test_s2v_sizes_itself_from_the_audio(make_ctx: Any, comfyui_0364: Comfy0364, tmp_path: Path) -> None:
    storage: LocalStorage = make_ctx.storage
    wav = ffmpeg_media(tmp_path / "voice.wav", "audio", seconds=6)
    png = ffmpeg_media(tmp_path / "face.png", "image")
    stored_wav = await storage.upload(wav, "inputs/t/voice.wav")
    stored_png = await storage.upload(png, "inputs/t/face.png")
    params = {"image": {"storage_path": stored_png.path}, "audio": {"storage_path": stored_wav.path}, "seed": 5}
    comfyui_0364.place_models(build("comfyui_s2v", {"image": "x.png", "audio": "a.wav"}))
    ctx = make_ctx("comfyui_s2v", params)
    prepared = await _prepare_and_stop(ctx, ctx.client)
    # 6 s at 16 fps = 96 frames → two 77-frame windows, the video cut to 96 frames (as long as the audio)
    assert prepared.info["num_frames"] == 96
    assert prepared.info["notes"][0] == "num_frames from the audio's length (6.00 s at 16 fps)"
    assert "sampled as 2 window(s) of 77 frames, the video cut to 96 frames" in prepared.info["notes"][1]
    kinds = [n["class_type"] for n in prepared.workflow.values()]
    assert kinds.count("WanSoundImageToVideoExtend") == 1 and kinds.count("KSampler") == 2
    cut = next(n for n in prepared.workflow.values() if n["class_type"] == "ImageFromBatch")["inputs"]
    assert (cut["batch_index"], cut["length"]) == (3, 96)


async def test_missing_models_fail_at_once_naming_files_and_folders(
    make_ctx: Any, comfyui_0364: Comfy0364, comfy64: ComfyClient
) -> None:
    names = {"high_noise_model": "absent_high.safetensors", "low_noise_model": "absent_low.safetensors"}
    ctx = make_ctx("comfyui_t2v", {**names, "vae_model": "absent_vae.safetensors"})
    comfy64.invalidate_object_info()
    with pytest.raises(WorkflowInvalid) as exc:
        await WanHandler("comfyui_t2v").prepare(ctx)
    msg = str(exc.value)
    assert exc.value.retryable is False
    expected = [("absent_high", "diffusion_models"), ("absent_low", "diffusion_models"), ("absent_vae", "vae")]
    for name, folder in expected:
        assert f"model {name}.safetensors is not installed" in msg and f"models/{folder}/" in msg
    assert await comfy64.queue() == ([], [])  # nothing was queued


async def test_daemon_runs_comfyui_tasks_and_fails_missing_models_without_retrying(harness64: Harness) -> None:
    h, store = harness64, harness64.store
    await h.start_daemon()
    bad = await store.enqueue(
        NewTask("comfyui_t2v", {"high_noise_model": "nowhere_high.safetensors", "seed": 1}, max_attempts=3)
    )
    refused = await store.enqueue(NewTask("comfyui_i2v", {"prompt": "no image"}, max_attempts=3))
    newer = await store.enqueue(NewTask("comfy", {"workflow": template("video_wan2_2_14B_i2v")}, max_attempts=3))
    task = await wait_task(store, bad.task_id)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "nowhere_high.safetensors is not installed" in (task.error or "")
    assert "models/diffusion_models/" in (task.error or "")
    task = await wait_task(store, refused.task_id)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "comfyui_i2v: params.image is required" in (task.error or "")
    task = await wait_task(store, newer.task_id)  # a current UI export with nodes newer than the server
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "node 129:163 (ComfyMathExpression): node type ComfyMathExpression is not on ComfyUI 0.3.64" in (
        task.error or ""
    )
    assert "update ComfyUI" in (task.error or "")
