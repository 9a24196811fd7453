"""`comfy-worker submit WORKFLOW --input NODE.FIELD=PATH --wait` against a running daemon: the local file goes
to storage, the task reads it from there, and --wait shows progress and prints the output URL."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from comfy_worker.handlers.prompt_runner.join import count_frames
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness
from tests.integration.daemon.test_daemon_comfy import make_mp4

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.comfyui


async def cli(harness: Harness, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": harness.dsn,
        "LOCAL_STORAGE_DIR": str(harness.storage_dir),
        "PYTHONPATH": str(REPO),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfy_worker",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_submit_local_input_and_wait(harness: Harness, tmp_path: Path) -> None:
    await harness.start_daemon()
    clip = tmp_path / "clip.mp4"
    make_mp4(clip, frames=5)
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps(wf.video_in()))
    code, out, err = await cli(harness, "submit", str(graph), "--input", f"1.video={clip}", "--wait")
    assert code == 0, err[-3000:]
    task_id, output_url = out.split()
    task = await harness.store.get_task(task_id)
    assert task.status == "complete" and task.output_url == output_url
    assert task.params["inputs"] == [{"storage_path": f"inputs/{task_id}/clip.mp4", "node_id": "1", "field": "video"}]
    assert f"{task_id} complete" in err  # the progress line reached the end
    [video] = task.result["outputs"]
    assert await count_frames(harness.storage_dir / video["storage_path"], decode=True) == 5


async def test_submit_rejects_bad_input_flags_and_files(harness: Harness, tmp_path: Path) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text("{ not json")
    code, _out, err = await cli(harness, "submit", str(graph))
    assert code == 1 and "is not valid JSON (line 1, column 3" in err
    graph.write_text(json.dumps(wf.video_in()))
    code, _out, err = await cli(harness, "submit", str(graph), "--input", "video=clip.mp4")
    assert code == 1 and "expected NODE.FIELD=URL or NODE.FIELD=PATH" in err
    code, _out, err = await cli(harness, "submit", str(graph), "--input", "1.video=/nope/clip.mp4")
    assert code == 1 and "neither an http(s) / s3 / gs / az URL nor an existing file" in err
    assert (await harness.store.fleet_snapshot())["queue"] == []  # nothing was queued
