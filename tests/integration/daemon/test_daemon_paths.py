"""Task params never name the worker's files, through the real daemon, real ComfyUI and real Postgres: loader
inputs that leave ComfyUI's input folder fail before anything is queued; a task id that is a path stays in its
own folders; a prompt_runner profile is a name."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comfy_worker.handlers.comfy import prompt_id_for
from comfy_worker.models import NewTask, TaskStatus
from comfy_worker.pathsafe import path_key
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.engine.conftest import ComfyServer

pytestmark = pytest.mark.comfyui


def image_loader(value: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": value}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"leak_{wf.tag()}"}},
    }


async def comfy_knows(base_url: str, prompt_id: str) -> bool:
    async with httpx.AsyncClient(timeout=30) as client:
        history = (await client.get(f"{base_url}/history/{prompt_id}")).json()
        queue = (await client.get(f"{base_url}/queue")).json()
    queued = [item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])]
    return bool(history) or prompt_id in queued


@pytest.fixture
def escape_link(comfyui_server: ComfyServer) -> Iterator[Path]:
    """A symlink in ComfyUI's input folder leading out of it (to /etc)."""
    link = comfyui_server.input_dir / f"escape_{wf.tag()}"
    link.symlink_to("/etc")
    yield link
    link.unlink()


@pytest.mark.parametrize("value", ["/etc/passwd", "../../../../../../etc/passwd", "{escape}/passwd"])
async def test_a_loader_naming_a_worker_file_fails_at_once_and_nothing_is_queued(
    harness: Harness, comfyui_server: ComfyServer, escape_link: Path, value: str
) -> None:
    value = value.format(escape=escape_link.name)
    await harness.start_daemon(settings=harness.settings(COMFY_INPUT_DIR=str(comfyui_server.input_dir)))
    tid = await harness.submit(image_loader(value))
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1, task.error
    assert f"node 1 (LoadImage) input 'image': {value!r}" in task.error
    assert "params.inputs entry" in task.error  # the fix
    assert task.error_details["error_type"] == "InputRejected"
    assert task.error_details["problems"][0]["input"] == "image"
    assert not await comfy_knows(comfyui_server.base_url, prompt_id_for(tid, 1))


async def test_a_task_id_that_is_a_path_keeps_to_its_own_folders(
    harness: Harness, comfyui_server: ComfyServer, http_files, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=8", "-frames:v", "4",
         "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    url = http_files("clip.mp4", clip.read_bytes())
    work = tmp_path / "deep" / "work"
    await harness.start_daemon(settings=harness.settings(WORK_DIR=str(work)))
    task_id = "../../../escaped/job"
    params = {"workflow": wf.video_in(), "video_url": url, "video_node_id": "1", "video_input_field": "video"}
    await harness.store.enqueue(NewTask("comfy", params, task_id=task_id))
    task = await wait_task(harness.store, task_id)
    assert task.status is TaskStatus.COMPLETE, task.error
    key = path_key(task_id)
    [out] = task.result["outputs"]
    assert out["storage_path"] == f"comfy/{key}/{out['filename']}"
    assert (harness.storage_dir / out["storage_path"]).is_file()
    uploaded = list((comfyui_server.input_dir / "comfy_worker" / key).iterdir())
    assert [p.name for p in uploaded] == ["clip.mp4"]
    # the row reads COMPLETE before the task's cleanup runs: stopping waits for every task's cleanup
    await harness.stop_all()
    # the work dir (created, then removed with rmtree) stayed under WORK_DIR: work/<worker>/../../../escaped
    # is tmp_path/escaped, where the id pointed
    assert not (tmp_path / "escaped").exists()
    assert [p.name for p in (work / "comfy-worker-t1").iterdir()] == []  # its own work dir, removed again


async def test_a_prompt_runner_task_naming_a_profile_path_fails_listing_the_names(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    params = {"video_name": "v", "total_frames": 9, "positive_prompt": "x", "profile": "/etc/passwd"}
    tid = (await harness.store.enqueue(NewTask("prompt_runner", params))).task_id
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert task.error.startswith("params.profile: '/etc/passwd' is not a profile name")
    assert "cw_test_chain" in task.error and "wan22_vace_v2v" in task.error  # PROFILES_DIR's and shipped
