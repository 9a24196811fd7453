"""The daemon runs `comfy` tasks end to end: real Postgres, real ComfyUI (the old CPU server), real ffmpeg,
a real HTTP server for inputs, local storage."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from comfy_worker.handlers.prompt_runner.join import count_frames
from comfy_worker.models import TaskStatus
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task

pytestmark = pytest.mark.comfyui


def make_mp4(path: Path, frames: int = 6) -> bytes:
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=32x32:rate=8",
            "-frames:v",
            str(frames),
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


async def test_outputs_of_every_kind_are_stored_and_listed(harness: Harness) -> None:
    await harness.start_daemon()
    tid = await harness.submit(wf.many_outputs())
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE, task.error
    outputs = task.result["outputs"]
    kinds = sorted(o["kind"] for o in outputs)
    assert kinds == ["audio", "image", "image", "image", "image", "latent", "video"], outputs
    for o in outputs:
        assert o["storage_path"] == f"comfy/{tid}/{o['filename']}"
        stored = harness.storage_dir / o["storage_path"]
        assert stored.is_file() and stored.stat().st_size == o["bytes"] > 0
        assert len(o["sha256"]) == 64 and o["content_type"]
        assert {"node_id", "url"} <= o.keys()
    video = next(o for o in outputs if o["kind"] == "video")
    assert task.output_url == video["url"]
    assert await count_frames(harness.storage_dir / video["storage_path"], decode=True) == 4
    worker = next(w for w in (await harness.store.fleet_snapshot())["workers"] if w["id"] == "comfy-worker-t1")
    assert worker["tasks_completed"] == 1


async def test_result_says_where_the_time_went_node_by_node(harness: Harness) -> None:
    await harness.start_daemon()
    tid = await harness.submit(wf.slow(0.6))  # CWSlow: 6 progress steps of 0.1 s, then SaveImage
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE, task.error
    timings = {t["node"]: t for t in task.result["node_timings"]}
    slow = timings["1"]
    assert slow["class_type"] == "CWSlow" and slow["steps"] == 6
    assert 0.55 <= slow["seconds"] <= task.result["execution_s"]
    assert 0.05 <= slow["first_step_s"] < slow["seconds"]


async def test_video_url_contract_fetches_uploads_and_sets_the_input(
    harness: Harness, http_files, tmp_path: Path
) -> None:
    url = http_files("clip.mp4", make_mp4(tmp_path / "clip.mp4", frames=6))
    await harness.start_daemon()
    tid = await harness.submit(wf.video_in(), video_url=url, video_node_id="1", video_input_field="video")
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE, task.error
    [video] = task.result["outputs"]
    assert await count_frames(harness.storage_dir / video["storage_path"], decode=True) == 6


async def test_two_inputs_with_the_same_file_name_each_reach_their_own_node(
    harness: Harness, http_files, tmp_path: Path
) -> None:
    """Both URLs end in clip.mp4: each node must still get its own video (not the last one fetched)."""
    (tmp_path / "www" / "a").mkdir(parents=True, exist_ok=True)
    (tmp_path / "www" / "b").mkdir(parents=True, exist_ok=True)
    six = http_files("a/clip.mp4", make_mp4(tmp_path / "six.mp4", frames=6))
    three = http_files("b/clip.mp4", make_mp4(tmp_path / "three.mp4", frames=3))
    graph = wf.video_in()
    graph["3"] = {**graph["1"], "inputs": dict(graph["1"]["inputs"])}
    prefix = graph["2"]["inputs"]["filename_prefix"] + "_b"
    graph["4"] = {"class_type": "CWSaveVideoMP4", "inputs": {"images": ["3", 0], "fps": 8.0, "filename_prefix": prefix}}
    await harness.start_daemon()
    tid = await harness.submit(graph, inputs=[{"url": six, "node_id": "1", "field": "video"},
                                              {"url": three, "node_id": "3", "field": "video"}])  # fmt: skip
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE, task.error
    frames = {o["node_id"]: await count_frames(harness.storage_dir / o["storage_path"], decode=True)
              for o in task.result["outputs"]}  # fmt: skip
    assert frames == {"2": 6, "4": 3}


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda w: w["1"].update(class_type="NoSuchNode"), "NoSuchNode"),
        (
            lambda w: w.update(
                {
                    "3": {
                        "class_type": "ImageScale",
                        "inputs": {
                            "image": ["1", 0],
                            "upscale_method": "bogus-cubic",
                            "width": 8,
                            "height": 8,
                            "crop": "disabled",
                        },
                    },
                    "4": {
                        "class_type": "SaveImage",
                        "inputs": {"images": ["3", 0], "filename_prefix": "never"},
                    },
                }
            ),
            "bogus-cubic",
        ),
    ],
    ids=["unknown_node", "bad_enum"],
)
async def test_invalid_workflows_fail_at_once_with_the_node_named(harness: Harness, mutate, expect: str) -> None:
    await harness.start_daemon()
    graph = wf.slow(0.1)
    mutate(graph)
    tid = await harness.submit(graph)
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED
    assert task.attempts == 1, "a workflow that can never run must not be retried"
    assert expect in task.error
    assert task.error_details["error_type"] == "WorkflowInvalid"


async def test_prompt_400_keeps_comfyui_node_errors(harness: Harness) -> None:
    await harness.start_daemon()
    graph = wf.slow(0.1)
    graph["1"]["inputs"]["steps"] = "not-a-number"  # passes our checks' shape, ComfyUI's validation rejects
    graph["1"]["inputs"]["seconds"] = -5.0
    tid = await harness.submit(graph)
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert task.error_details["error_type"] == "WorkflowInvalid"
    assert "1" in json.dumps(task.error_details)


async def test_runtime_error_fails_with_the_node_and_message(harness: Harness) -> None:
    await harness.start_daemon()
    tid = await harness.submit(wf.raises("the sampler exploded"))
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "the sampler exploded" in task.error
    assert task.error_details["error_type"] == "ExecutionFailed"


async def test_cancel_interrupts_the_running_prompt_and_the_worker_moves_on(harness: Harness) -> None:
    await harness.start_daemon()
    slow_id = await harness.submit(wf.slow(60))
    await wait_task(harness.store, slow_id, statuses=("running",))
    for _ in range(100):  # wait until ComfyUI reports progress for it (it is really running)
        if (await harness.store.get_task(slow_id)).progress:
            break
        await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await harness.store.cancel(slow_id, "no longer needed")
    next_id = await harness.submit(wf.slow(0.2))
    done = await wait_task(harness.store, next_id, timeout=40)
    assert done.status is TaskStatus.COMPLETE
    assert loop.time() - t0 < 30, "the cancelled 60 s prompt was not interrupted"
    cancelled = await harness.store.get_task(slow_id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.error == "no longer needed"


async def test_websocket_dropped_mid_task_completion_still_seen(harness: Harness) -> None:
    daemon = await harness.start_daemon()
    tid = await harness.submit(wf.slow(3))
    await wait_task(harness.store, tid, statuses=("running",))
    await asyncio.sleep(0.5)
    await daemon.client.drop_connection()
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE and task.attempts == 1, task.error


async def test_private_url_refused_without_retries(harness: Harness, http_files) -> None:
    url = http_files("clip.mp4", b"x" * 100)
    await harness.start_daemon(settings=harness.settings(ALLOW_PRIVATE_URLS="false"))
    tid = await harness.submit(wf.video_in(), video_url=url, video_node_id="1", video_input_field="video")
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "127.0.0.1" in task.error and "ALLOW_PRIVATE_URLS" in task.error


async def test_oversize_input_refused_without_retries(harness: Harness, http_files) -> None:
    url = http_files("big.mp4", b"x" * 50_000)
    await harness.start_daemon(settings=harness.settings(INPUT_MAX_BYTES="10000"))
    tid = await harness.submit(wf.video_in(), video_url=url, video_node_id="1", video_input_field="video")
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "INPUT_MAX_BYTES" in task.error


async def test_malformed_params_fail_with_the_field_named(harness: Harness) -> None:
    await harness.start_daemon()
    bad_json = await harness.submit("{not json")  # type: ignore[arg-type]
    no_node = await harness.submit(wf.video_in(), video_url="http://127.0.0.1:9/x.mp4", video_node_id="1")
    for tid, expect in ((bad_json, "params.workflow is not valid JSON"), (no_node, "video_input_field")):
        task = await wait_task(harness.store, tid)
        assert task.status is TaskStatus.FAILED and task.attempts == 1
        assert expect in task.error


async def test_ui_format_workflow_is_converted_and_runs(harness: Harness) -> None:
    t = wf.tag()
    ui = {
        "last_node_id": 2,
        "last_link_id": 1,
        "nodes": [
            {
                "id": 1,
                "type": "EmptyImage",
                "inputs": [],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
                "widgets_values": [16, 16, 1, 0],
            },
            {
                "id": 2,
                "type": "SaveImage",
                "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
                "outputs": [],
                "widgets_values": [f"ui_{t}"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "version": 0.4,
    }
    await harness.start_daemon()
    tid = await harness.submit(ui)
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE, task.error
    assert [o["kind"] for o in task.result["outputs"]] == ["image"]
    assert task.output_url and task.output_url.endswith(".png")
