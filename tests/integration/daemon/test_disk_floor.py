"""The disk floor: a worker short of space claims nothing, says why in its worker row (and the worker_disk view),
and resumes by itself; a task that meets a full disk, or an input that would cross the floor, is released, not
failed. Real daemon, Postgres, test ComfyUI and HTTP servers; a real small tmpfs where this machine lets us mount
one (root), else the kernel's /dev/full (a real ENOSPC) and an injected free-space function."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from comfy_worker.diskspace import GB
from comfy_worker.models import NewTask, TaskStatus
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.test_daemon_comfy import make_mp4
from tests.integration.engine.conftest import ComfyServer

pytestmark = pytest.mark.comfyui
WORKER = "comfy-worker-t1"


async def worker_disk(dsn: str, worker_id: str = WORKER) -> dict[str, Any] | None:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("select * from worker_disk where id = $1", worker_id)
    finally:
        await conn.close()
    return dict(row) if row else None


async def wait_disk_row(dsn: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    row: dict[str, Any] | None = None
    while loop.time() < deadline:
        row = await worker_disk(dsn)
        if row is not None and ok(row):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker_disk never matched; last row: {row}")


async def after_heartbeats(dsn: str, n: int, worker_id: str = WORKER) -> None:
    """Return once the worker's row shows ``n`` more heartbeats (so several claim cycles have passed)."""
    conn = await asyncpg.connect(dsn)
    try:
        seen = await conn.fetchval("select last_heartbeat from workers where id = $1", worker_id)
        for _ in range(n):
            for _ in range(400):
                now = await conn.fetchval("select last_heartbeat from workers where id = $1", worker_id)
                if now != seen:
                    seen = now
                    break
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("no heartbeat")
    finally:
        await conn.close()


async def test_an_injected_free_space_drives_stop_report_and_resume(harness: Harness) -> None:
    free = {"bytes": GB}
    await harness.start_daemon(
        settings=harness.settings(MIN_FREE_DISK_GB="2"),
        before_start=lambda d: setattr(d.upkeep.disk, "free_fn", lambda _p: free["bytes"]),
    )
    row = await wait_disk_row(harness.dsn, lambda r: r["claiming"] is False)
    assert row["disk_state"] == "below" and row["free_bytes"] == GB and row["floor_bytes"] == 2 * GB
    assert row["reason"].startswith("disk below MIN_FREE_DISK_GB") and "1.00 GB free (floor 2.00 GB)" in row["reason"]
    tid = await harness.submit(wf.slow(0.1))
    await after_heartbeats(harness.dsn, 3)
    task = await harness.store.get_task(tid)
    assert task.status is TaskStatus.QUEUED and task.attempts == 0, "claimed below the floor"

    free["bytes"] = 2 * GB + GB // 4  # above the floor again, but near it
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE, task.error
    row = await wait_disk_row(harness.dsn, lambda r: r["claiming"] is True)
    assert row["disk_state"] == "near" and row["reason"] is None
    free["bytes"] = 50 * GB
    assert (await wait_disk_row(harness.dsn, lambda r: r["disk_state"] == "ok"))["free_gb"] == 50.0


async def test_a_floor_above_the_machines_free_space_claims_nothing_and_says_so(harness: Harness) -> None:
    await harness.start_daemon(settings=harness.settings(MIN_FREE_DISK_GB="1000000"))  # a petabyte
    tid = await harness.submit(wf.slow(0.1))
    row = await wait_disk_row(harness.dsn, lambda r: r["claiming"] is False)
    assert row["disk_state"] == "below" and "MIN_FREE_DISK_GB" in row["reason"]
    assert row["free_bytes"] > 0 and row["floor_bytes"] == 1000000 * GB
    await after_heartbeats(harness.dsn, 3)
    task = await harness.store.get_task(tid)
    assert task.status is TaskStatus.QUEUED and task.attempts == 0
    conn = await asyncpg.connect(harness.dsn)
    try:
        metadata = json.loads(await conn.fetchval("select metadata from workers where id = $1", WORKER))
    finally:
        await conn.close()
    assert metadata["disk"]["below_floor"] is True and metadata["disk"]["filesystems"]
    assert {"comfy_bytes", "work_bytes"} <= metadata.keys()


# --- full disks -------------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path | None]]:
    """``mount(size_bytes)``: a fresh tmpfs of that size, or None where this machine does not let us mount."""
    mounted: list[Path] = []

    def mount(size: int) -> Path | None:
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, check=False)  # fmt: skip
        if done.returncode != 0:
            return None
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
async def inputs(tmp_path: Path) -> AsyncIterator[Callable[[str, bytes, bool], str]]:
    """A real HTTP server: ``url = put(name, data, chunked)``; chunked answers carry no Content-Length."""
    files: dict[str, tuple[bytes, bool]] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        data, chunked = files[request.match_info["name"]]
        if not chunked:
            return web.Response(body=data, content_type="video/mp4")
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 256 * 1024):
            await resp.write(data[i : i + 256 * 1024])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def put(name: str, data: bytes, chunked: bool) -> str:
        files[name] = (data, chunked)
        return f"http://127.0.0.1:{port}/{name}"

    yield put
    await runner.cleanup()


async def released_for_disk(harness: Harness, tid: str) -> dict[str, Any]:
    row = await wait_disk_row(harness.dsn, lambda r: "full disk" in (r["reason"] or ""))
    task = await harness.store.get_task(tid)
    assert task.status is TaskStatus.QUEUED and task.attempts == 0, (task.status, task.attempts, task.error)
    assert task.error is None, "released, not failed"
    return row


async def test_enospc_during_a_download_releases_the_task_and_another_worker_runs_it(
    harness: Harness, small_fs: Callable[[int], Path | None], inputs: Any, tmp_path: Path
) -> None:
    clip = make_mp4(tmp_path / "clip.mp4", frames=4)
    url = inputs("big.mp4", clip + b"\0" * (3 * 1024 * 1024), True)  # 3 MB more than the clip, no Content-Length
    tid = str(uuid.uuid4())
    work = small_fs(1024 * 1024)
    if work is None:  # no mount here: the task's partial download is a link to /dev/full (writes fail ENOSPC)
        work = tmp_path / "work"
        part = work / WORKER / f"{tid}-1" / "inputs" / ".big.mp4.part"
        part.parent.mkdir(parents=True)
        part.symlink_to("/dev/full")
    else:
        work = work / "w"
    await harness.start_daemon(settings=harness.settings(WORK_DIR=str(work), MIN_FREE_DISK_GB="0"))
    params = {"workflow": wf.video_in(), "video_url": url, "video_node_id": "1", "video_input_field": "video"}
    await harness.store.enqueue(NewTask("comfy", params, task_id=tid, max_attempts=1))
    row = await released_for_disk(harness, tid)
    assert "No space left on device" in row["reason"]
    await harness.stop_all()

    # the clip without its padding, served by another worker with room: the same task completes
    inputs("big.mp4", clip, True)
    await harness.start_daemon("comfy-worker-t2", settings=harness.settings(WORK_DIR=str(tmp_path / "roomy")))
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.COMPLETE and task.worker_id == "comfy-worker-t2", task.error


async def test_an_input_whose_declared_size_would_cross_the_floor_is_refused_before_it_downloads(
    harness: Harness, small_fs: Callable[[int], Path | None], inputs: Any, comfyui_server: ComfyServer, tmp_path: Path
) -> None:
    url = inputs("huge.mp4", b"\0" * (6 * 1024 * 1024), False)  # Content-Length: 6 MiB
    work = small_fs(8 * 1024 * 1024)
    env = {"MIN_FREE_DISK_GB": str(4 / 1024), "COMFY_INPUT_DIR": str(comfyui_server.input_dir)}  # a 4 MiB floor
    if work is None:
        work = tmp_path / "work"
        await harness.start_daemon(
            settings=harness.settings(WORK_DIR=str(work), **env),
            before_start=lambda d: setattr(
                d.upkeep.disk, "free_fn", lambda p: 8 * 1024 * 1024 if str(p).startswith(str(work)) else 100 * GB
            ),
        )
    else:
        await harness.start_daemon(settings=harness.settings(WORK_DIR=str(work), **env))
    tid = await harness.submit(wf.video_in(), video_url=url, video_node_id="1", video_input_field="video")
    row = await released_for_disk(harness, tid)
    assert f"input URL {url} is 0.01 GB" in row["reason"] and "MIN_FREE_DISK_GB" in row["reason"]
    assert not list(work.rglob("huge.mp4*")), "the input was written before the check"
