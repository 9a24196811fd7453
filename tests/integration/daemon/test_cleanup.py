"""Nothing a finished task leaves behind: real daemon, real Postgres, the real test ComfyUI (attached, with its
input / output / temp folders given as COMFY_INPUT_DIR / COMFY_OUTPUT_DIR / COMFY_TEMP_DIR), real HTTP inputs."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_worker.daemon import Daemon
from comfy_worker.models import NewTask, TaskStatus
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.test_daemon_comfy import make_mp4
from tests.integration.engine.conftest import ComfyServer
from tests.integration.prompt_runner.conftest import chain_params

pytestmark = pytest.mark.comfyui


def folders_env(server: ComfyServer, **extra: str) -> dict[str, str]:
    return {
        "COMFY_INPUT_DIR": str(server.input_dir),
        "COMFY_OUTPUT_DIR": str(server.output_dir),
        "COMFY_TEMP_DIR": str(server.workdir / "temp"),
        **extra,
    }


def files_under(server: ComfyServer) -> set[Path]:
    roots = (server.input_dir, server.output_dir, server.workdir / "temp")
    return {p for root in roots for p in root.rglob("*") if p.is_file()}


async def history(server: ComfyServer) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(f"{server.base_url}/history", params={"max_items": 100000})
        resp.raise_for_status()
        return dict(resp.json())


def prompts_naming(hist: dict[str, Any], task_id: str) -> list[str]:
    """History entries whose graph names the task (its upload or output prefix): every prompt the task ran."""
    return [pid for pid, entry in hist.items() if task_id in repr(entry.get("prompt"))]


def video_in_with_preview() -> dict[str, Any]:
    graph = wf.video_in()
    graph["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}  # a temp file per prompt
    return graph


async def test_after_many_tasks_comfyui_keeps_no_file_and_no_history_of_them(
    harness: Harness, comfyui_server: ComfyServer, http_files: Callable[[str, bytes], str], tmp_path: Path
) -> None:
    before = files_under(comfyui_server)
    history_before = set(await history(comfyui_server))
    url = http_files("clip.mp4", make_mp4(tmp_path / "clip.mp4", frames=4))
    env = folders_env(comfyui_server, WORK_DIR=str(tmp_path / "work"))
    daemon = await harness.start_daemon(settings=harness.settings(**env))
    ids = []
    for i in range(6):
        if i % 2:
            ids.append(await harness.submit(wf.many_outputs()))
        else:
            ids.append(await harness.submit(video_in_with_preview(), video_url=url, video_node_id="1",
                                            video_input_field="video"))  # fmt: skip
    tasks = [await wait_task(harness.store, tid) for tid in ids]
    await harness.stop_all()  # every task's cleanup has run once its runner is done
    for task in tasks:
        assert task.status is TaskStatus.COMPLETE, task.error
        for out in task.result["outputs"]:
            assert (harness.storage_dir / out["storage_path"]).stat().st_size == out["bytes"] > 0
    left = files_under(comfyui_server) - before
    assert left == set(), f"files of finished tasks left in ComfyUI: {sorted(map(str, left))[:10]}"
    hist = await history(comfyui_server)
    assert set(hist) <= history_before, "history entries of finished tasks left in ComfyUI"
    assert all(not prompts_naming(hist, t.task_id) for t in tasks)
    assert not any(daemon.work_root.iterdir()), "work dirs left behind"


async def test_the_same_graph_twice_gives_each_task_its_own_stored_output(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    graph = {  # identical both times: ComfyUI's cache would hand the second task the first one's (deleted) file
        "1": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 24, "batch_size": 1, "color": 4242}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "same_graph"}},
    }
    await harness.start_daemon(settings=harness.settings(**folders_env(comfyui_server)))
    first = await wait_task(harness.store, await harness.submit(graph))
    assert first.status is TaskStatus.COMPLETE, first.error
    own = comfyui_server.output_dir / "comfy_worker" / first.task_id
    for _ in range(100):  # the first task's files are gone before the second is submitted
        if not own.exists():
            break
        await asyncio.sleep(0.05)
    assert not own.exists()
    second = await wait_task(harness.store, await harness.submit(graph))
    assert second.status is TaskStatus.COMPLETE, second.error
    assert second.attempts == 1
    [a], [b] = first.result["outputs"], second.result["outputs"]
    assert a["storage_path"] != b["storage_path"]
    stored = [(harness.storage_dir / o["storage_path"]).read_bytes() for o in (a, b)]
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in stored) and len(stored[1]) == b["bytes"]
    # SaveImage embeds the prompt it ran: the second file was written for the second task, not listed from cache
    assert second.task_id.encode() in stored[1] and first.task_id.encode() not in stored[1]


def delete_outputs_before_download(daemon: Daemon, server: ComfyServer, times: int) -> list[str]:
    """Wrap the shared client's download so the first ``times`` calls find their listed files deleted (as if
    someone cleaned ComfyUI's output folder between the history and the download)."""
    client = daemon.client
    real = client.download_outputs
    calls: list[str] = []

    async def download(history: Any, dest: Any, **kw: Any) -> Any:
        calls.append(history.prompt_id)
        if len(calls) <= times:
            for node in history.outputs.values():
                for item in node.get("images", []) + node.get("gifs", []):
                    (server.output_dir / item["subfolder"] / item["filename"]).unlink()
        return await real(history, dest, **kw)

    client.download_outputs = download  # type: ignore[method-assign]
    return calls


async def test_an_output_deleted_before_the_download_reruns_the_prompt_and_completes(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    calls: list[list[str]] = []
    await harness.start_daemon(
        settings=harness.settings(**folders_env(comfyui_server)),
        before_start=lambda d: calls.append(delete_outputs_before_download(d, comfyui_server, 1)),
    )
    tid = await harness.submit(wf.slow(0.1))
    task = await wait_task(harness.store, tid)
    [calls_made] = calls
    assert task.status is TaskStatus.COMPLETE, task.error
    assert task.attempts == 1, "re-run inside the attempt, not through the queue"
    # the first prompt's files were gone; a fresh prompt ran and its files were downloaded
    assert len(calls_made) == 2 and calls_made[0] != calls_made[1]
    [out] = task.result["outputs"]
    assert (harness.storage_dir / out["storage_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_task_whose_output_stays_missing_is_never_complete(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    calls: list[list[str]] = []
    await harness.start_daemon(
        settings=harness.settings(**folders_env(comfyui_server)),
        before_start=lambda d: calls.append(delete_outputs_before_download(d, comfyui_server, 99)),
    )
    tid = await harness.submit(wf.slow(0.1), max_attempts=1)
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED
    assert task.error_details["error_type"] == "OutputMissing"
    assert len(calls[0]) == 2  # the one re-run, then given up


async def test_a_chain_keeps_its_intermediates_until_it_ends(harness: Harness, comfyui_server: ComfyServer) -> None:
    params = chain_params(overrides={"nodes": {"54": {"delay_s": 0.4}}})
    name = params["video_name"]
    await harness.start_daemon(settings=harness.settings(**folders_env(comfyui_server)))
    tid = (await harness.store.enqueue(NewTask("prompt_runner", params))).task_id
    own = comfyui_server.output_dir / "comfy_worker" / tid
    low2 = f"{name}-004-low"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 180
    while True:  # chunk 2 is done, chunk 3 renders: what chunks 1 and 2 made is still there
        task = await harness.store.get_task(tid)
        if task.checkpoint and low2 in task.checkpoint.get("completed", []):
            break
        assert task.status is TaskStatus.RUNNING or task.status is TaskStatus.QUEUED, task.error
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert (own / "chain" / name / "videos" / f"{name}_chunk_001.mp4").is_file()
    assert (own / "chain" / name / "references" / f"{name}_chunk_001_ref.png").is_file()
    early = [pid for job in (f"{name}-001-high", f"{name}-002-low") for pid in task.checkpoint["prompts"][job]]
    assert set(early) <= set(await history(comfyui_server))
    assert (await harness.store.get_task(tid)).status is TaskStatus.RUNNING, "the chain ended before the check"

    task = await wait_task(harness.store, tid, timeout=240)
    assert task.status is TaskStatus.COMPLETE, task.error
    await harness.stop_all()
    assert not own.exists()
    ran = [pid for pids in task.result["prompts"].values() for pid in pids]
    assert len(ran) == 6 and not set(ran) & set(await history(comfyui_server))


def _age(path: Path, seconds: float) -> None:
    t = os.path.getmtime(path) - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t))


async def test_orphans_are_swept_at_start_and_every_so_often(harness: Harness, comfyui_server: ComfyServer) -> None:
    def orphan(folder: Path, task_id: str, age_s: float) -> Path:
        root = folder / "comfy_worker" / task_id
        (root / "1-0").mkdir(parents=True)
        (root / "1-0" / "img_00001_.png").write_bytes(b"\x89PNG" + b"0" * 1000)
        _age(root, age_s)
        return root

    crashed_out = orphan(comfyui_server.output_dir, "crashed-task", 7200)
    crashed_in = orphan(comfyui_server.input_dir, "crashed-task", 7200)
    recent = orphan(comfyui_server.output_dir, "maybe-still-running-elsewhere", 60)
    env = folders_env(comfyui_server, ORPHAN_SWEEP_INTERVAL_S="1")
    await harness.start_daemon(settings=harness.settings(**env))
    assert not crashed_out.exists() and not crashed_in.exists()  # swept at start
    assert recent.exists()  # younger than TASK_TIMEOUT_S: left alone
    later = orphan(comfyui_server.output_dir, "crashed-while-we-ran", 7200)
    for _ in range(100):
        if not later.exists():
            break
        await asyncio.sleep(0.05)
    assert not later.exists(), "the periodic sweep did not run"
    assert recent.exists()
    await harness.stop_all()
    shutil.rmtree(recent)


async def test_keep_comfy_files_keeps_everything(
    harness: Harness, comfyui_server: ComfyServer, tmp_path: Path
) -> None:
    env = folders_env(comfyui_server, KEEP_COMFY_FILES="true", WORK_DIR=str(tmp_path))
    daemon = await harness.start_daemon(settings=harness.settings(**env))
    tid = await harness.submit(wf.slow(0.1))
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE
    await harness.stop_all()
    own = comfyui_server.output_dir / "comfy_worker" / tid
    assert [p.name for p in own.rglob("*.png")] == [task.result["outputs"][0]["filename"]]
    assert task.result["prompt_id"] in await history(comfyui_server)
    assert (daemon.work_root / f"{tid}-1").is_dir()
    shutil.rmtree(own)
