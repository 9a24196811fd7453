"""WanHandler's stages with a real HTTP source (aiohttp on 127.0.0.1), local storage, and the engine on the fake
Wan2GP: inputs fetched through comfy_worker.inputs, LoRAs into Wan2GP's LoRA folder under the cap, outputs
stored like every other task; bad params refused before anything starts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from comfy_worker.config import load_settings
from comfy_worker.errors import ExecutionInterrupted, ExecutionTimeout, InputRejected
from comfy_worker.handlers.base import TaskContext
from comfy_worker.inputs import settings_fetcher
from comfy_worker.models import Task, TaskStatus
from comfy_worker.storage import LocalStorage, open_storage
from tests.s3_server import BUCKET, MotoServer
from worker_wgp.engine import WanEngine
from worker_wgp.handler import WanHandler, handlers
from worker_wgp.tasks import lora_filename

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
LORA = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x00" * 4096  # shaped like a tiny safetensors file


@pytest.fixture
async def source() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        name = request.match_info["name"]
        if name.endswith(".png") or name.startswith("signed-image"):
            return web.Response(body=PNG, content_type="image/png")
        size = int(request.query.get("size", len(LORA)))
        return web.Response(body=(LORA * (size // len(LORA) + 1))[:size], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/f/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    await runner.cleanup()


@pytest.fixture
def make_ctx(tmp_path: Path, engine: WanEngine) -> Callable[..., TaskContext]:
    settings = load_settings({"ALLOW_PRIVATE_URLS": "true", "WAN2GP_LORA_MAX_BYTES": "100000",
                              "LOCAL_STORAGE_DIR": str(tmp_path / "stored")})
    storage = LocalStorage(tmp_path / "stored")
    progress: list[dict[str, Any]] = []

    def make(task_type: str, params: dict[str, Any], task_id: str = "t1") -> TaskContext:
        async def record(update: dict[str, Any]) -> None:
            progress.append(update)

        task = Task(task_id, task_type, params, TaskStatus.RUNNING, attempts=1)
        ctx = TaskContext(task=task, settings=settings, engine=engine.scope(task, asyncio.Event()), storage=storage,
                          fetch=settings_fetcher(settings), work_dir=tmp_path / "work" / task_id,
                          progress=record, checkpoint=record, cancel=asyncio.Event())
        ctx.recorded = progress  # type: ignore[attr-defined]
        return ctx

    return make


async def run(handler: WanHandler, ctx: TaskContext) -> Any:
    prepared = await handler.submit(ctx, await handler.prepare(ctx))
    executed = await handler.execute(ctx, prepared)
    return await handler.finish(ctx, executed)


async def test_the_stored_name_keeps_wan2gp_time_and_seed_and_drops_the_prompt(
    engine: WanEngine, make_ctx: Callable[..., TaskContext], tmp_path: Path
) -> None:
    """The real Wan2GP (GPU run, issue 23) names a video ``<time>_seed<N>_<prompt>.mp4`` with the prompt's spaces
    and punctuation in it, as the stand-in now does; the object key and URL carry the time and seed only."""
    prompt = 'a "red" fox & a café: #1 at 50% off?'
    params = {"prompt": prompt, "resolution": "64x48", "video_length": 5, "num_inference_steps": 1, "seed": 7}
    result = await run(WanHandler("t2v"), make_ctx("t2v", params, task_id="t-name"))
    [out] = result.result["outputs"]
    assert re.fullmatch(r"t2v/t-name/\d{4}-\d{2}-\d{2}-\d{2}h\d{2}m\d{2}s_seed7\.mp4", out["storage_path"]), out
    assert out["filename"] == out["storage_path"].rsplit("/", 1)[1] and "fox" not in out["url"]
    assert (tmp_path / "stored" / out["storage_path"]).read_bytes()[4:8] == b"ftyp"


async def test_i2v_task_fetches_inputs_and_loras_and_stores_the_video(
    engine: WanEngine, make_ctx: Callable[..., TaskContext], source: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, hits = source
    lora_url = f"{base}/f/motion.safetensors"
    params = {"prompt": "a cat walks", "image_start": f"{base}/f/start.png", "resolution": "64x48",
              "video_length": 9, "num_inference_steps": 3, "loras": [{"url": lora_url, "multiplier": 0.7}]}
    ctx = make_ctx("i2v", params)
    with capture_logs() as logs:
        result = await run(WanHandler("i2v"), ctx)
    [out] = result.result["outputs"]
    stored = tmp_path / "stored" / out["storage_path"]
    assert out["kind"] == "video" and out["content_type"] == "video/mp4" and out["storage_path"].startswith("i2v/t1/")
    assert stored.read_bytes()[4:8] == b"ftyp" and out["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert result.output_url == out["url"]
    assert result.result["model"] == "i2v" and result.result["model_switched"] is True
    lora = tmp_path / "loras" / "i2v" / lora_filename(lora_url)
    assert lora.read_bytes() == LORA  # in Wan2GP's LoRA folder, under the name the URL maps to
    assert any("multipliers: '0.7'" in e.get("line", "") and lora.name in e.get("line", "") for e in logs)
    assert (ctx.work_dir / "inputs" / "image_start.png").read_bytes() == PNG
    assert not list((tmp_path / "wan2gp-out").glob("*.mp4"))  # moved out of Wan2GP's folder
    steps = [u["step"] for u in ctx.recorded if u["phase"] == "inference"]  # type: ignore[attr-defined]
    assert steps == [0, 1, 2] and ctx.started.is_set()  # Wan2GP's callback runs from step 0; step 3 is decoding

    # the same LoRA again: served from Wan2GP's folder, not downloaded twice
    await run(WanHandler("i2v"), make_ctx("i2v", params, task_id="t2"))
    assert hits.count("/f/motion.safetensors") == 1 and hits.count("/f/start.png") == 2


async def test_image_task_and_the_handler_table(engine: WanEngine, make_ctx: Callable[..., TaskContext]) -> None:
    table = handlers()
    assert set(table) >= {"i2v", "t2v", "vace", "flux", "qwen_image_edit"} and "comfy" not in table
    result = await run(table["flux"], make_ctx("flux", {"prompt": "a cat", "resolution": "32x32"}))
    assert [o["kind"] for o in result.result["outputs"]] == ["image"] and result.output_url


async def test_bad_params_fail_in_prepare_before_wan2gp_starts(
    engine: WanEngine, make_ctx: Callable[..., TaskContext]
) -> None:
    with pytest.raises(InputRejected, match=r"params\.strength is not a parameter of t2v tasks"):
        await WanHandler("t2v").prepare(make_ctx("t2v", {"prompt": "a", "strength": 0.5}))
    assert engine.pid is None


async def test_an_oversize_lora_is_refused_and_leaves_nothing_behind(
    engine: WanEngine, make_ctx: Callable[..., TaskContext], source: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, _ = source
    ctx = make_ctx("t2v", {"prompt": "a", "loras": [{"url": f"{base}/f/huge.safetensors?size=200000"}]})
    with pytest.raises(InputRejected, match="WAN2GP_LORA_MAX_BYTES") as info:
        await WanHandler("t2v").prepare(ctx)
    assert not info.value.retryable and info.value.details["field"] == "loras"
    assert list((tmp_path / "loras" / "t2v").iterdir()) == []


async def test_cancel_and_deadline_interrupt_the_generation(
    engine: WanEngine, make_ctx: Callable[..., TaskContext]
) -> None:
    handler = WanHandler("t2v")
    slow = {"prompt": "[standin:step_s=0.2]", "num_inference_steps": 100, "resolution": "32x32"}
    ctx = make_ctx("t2v", slow)
    prepared = await handler.prepare(ctx)
    execution = asyncio.create_task(handler.execute(ctx, prepared))
    await asyncio.wait_for(ctx.started.wait(), 30)
    ctx.cancel.set()
    with pytest.raises(ExecutionInterrupted):
        await execution
    ctx = make_ctx("t2v", {**slow, "timeout_s": 1}, task_id="t3")
    with pytest.raises(ExecutionTimeout, match="within 1 s"):
        await handler.execute(ctx, await handler.prepare(ctx))
    assert not (await engine.status()).busy  # the child stopped working on it


@pytest.mark.parametrize(
    "image_start",
    [
        {"base64": base64.b64encode(PNG).decode()},  # no filename: fetched as image_start.bin
        "{base}/f/signed-image?X-Amz-Signature=abc",  # a URL whose name has no extension
    ],
)
async def test_an_image_without_an_image_extension_reaches_wan2gp_as_an_image(
    engine: WanEngine, make_ctx: Callable[..., TaskContext], source: tuple[str, list[str]],
    image_start: Any,
) -> None:
    """Wan2GP knows images by their file extension only (the stand-in, like upstream, refuses an image_start
    named .bin with "Start Image should be an Image"): the file is renamed after its first bytes."""
    base, _ = source
    if isinstance(image_start, str):
        image_start = image_start.format(base=base)
    ctx = make_ctx("i2v", {"prompt": "a cat", "image_start": image_start, "resolution": "64x48",
                           "video_length": 5, "num_inference_steps": 2})
    result = await run(WanHandler("i2v"), ctx)
    assert [o["kind"] for o in result.result["outputs"]] == ["video"]
    assert [f.name for f in (ctx.work_dir / "inputs").iterdir()] == ["image_start.png"]


async def test_a_file_that_is_no_image_is_refused_naming_the_key(
    engine: WanEngine, make_ctx: Callable[..., TaskContext]
) -> None:
    text = base64.b64encode(b"hello, not a picture").decode()
    ctx = make_ctx("i2v", {"prompt": "a cat", "image_start": {"base64": text}})
    with pytest.raises(InputRejected, match=r"params\.image_start must be an image \(PNG, JPEG") as info:
        await WanHandler("i2v").prepare(ctx)
    assert info.value.details["field"] == "image_start" and not info.value.retryable
    assert engine.pid is None and list((ctx.work_dir / "inputs").iterdir()) == []


async def test_a_vace_task_gets_its_control_video_to_wan2gp(
    engine: WanEngine, make_ctx: Callable[..., TaskContext], tmp_path: Path
) -> None:
    """Without "V" in video_prompt_type Wan2GP (and the stand-in) drops video_guide silently; the task's
    default enables it, and the control video (base64, no name: sniffed as MP4) reaches generate_media."""
    guide = tmp_path / "guide.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "5",
                    "-pix_fmt", "yuv420p", str(guide)], check=True)
    video = base64.b64encode(guide.read_bytes()).decode()
    ctx = make_ctx("vace", {"prompt": "a dancer", "video_guide": {"base64": video},
                            "resolution": "64x48", "video_length": 5, "num_inference_steps": 2})
    with capture_logs() as logs:
        result = await run(WanHandler("vace"), ctx)
    assert [o["kind"] for o in result.result["outputs"]] == ["video"]
    assert any(e.get("line", "") == "Control video: video_guide.mp4 mask: None" for e in logs), logs


async def test_a_vace_task_gets_its_reference_images_to_wan2gp(
    engine: WanEngine, make_ctx: Callable[..., TaskContext], tmp_path: Path
) -> None:
    """Wan2GP drops image_refs silently unless video_prompt_type has "I" (validate_settings): the VACE default
    enables it when image_refs are given, and they reach generate_media."""
    guide = tmp_path / "guide.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "5",
                    "-pix_fmt", "yuv420p", str(guide)], check=True)
    video = base64.b64encode(guide.read_bytes()).decode()
    ctx = make_ctx("vace", {"prompt": "a dancer", "video_guide": {"base64": video},
                            "image_refs": [{"base64": base64.b64encode(PNG).decode()}],
                            "resolution": "64x48", "video_length": 5, "num_inference_steps": 2})  # fmt: skip
    with capture_logs() as logs:
        result = await run(WanHandler("vace"), ctx)
    assert [o["kind"] for o in result.result["outputs"]] == ["video"]
    assert any(e.get("line", "").startswith("Reference images: ['image_refs") for e in logs), logs


async def test_a_task_on_s3_reads_its_image_from_the_bucket_and_stores_the_video_there(
    make_ctx: Callable[..., TaskContext], moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """STORAGE_URL=s3://… (a real S3 server, moto): the Wan2GP task's storage_path input comes from the bucket and
    its video goes there, like every other task type's."""
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    storage = open_storage(load_settings({"STORAGE_URL": f"s3://{BUCKET}/wan2gp"}))
    moto.put(BUCKET, "wan2gp/incoming/start.png", PNG)
    params = {
        "prompt": "a cat walks",
        "image_start": {"storage_path": "incoming/start.png"},
        "resolution": "64x48",
        "video_length": 9,
        "num_inference_steps": 2,
    }
    ctx = make_ctx("i2v", params, task_id="t-s3")
    ctx.storage = storage
    try:
        result = await run(WanHandler("i2v"), ctx)
    finally:
        await storage.aclose()
    [out] = result.result["outputs"]
    body = moto.object(BUCKET, f"wan2gp/{out['storage_path']}")
    assert out["storage_path"].startswith("i2v/t-s3/") and body[4:8] == b"ftyp"
    assert out["sha256"] == hashlib.sha256(body).hexdigest() and "X-Amz-Signature=" in result.output_url
    # named after its key, as a URL's is (the object's own name was kept before)
    assert [f.name for f in (ctx.work_dir / "inputs").iterdir()] == ["image_start.png"]
    assert (ctx.work_dir / "inputs" / "image_start.png").read_bytes() == PNG
    assert not (tmp_path / "stored").exists()
