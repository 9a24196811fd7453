"""The daemon with STORAGE_URL=s3://… on a real S3 server (moto in server mode), real Postgres and the real
test ComfyUI, as ``python -m comfy_worker`` processes:

* a ``comfy`` task whose input is given as ``s3://bucket/key`` stores its outputs in the bucket; the presigned
  URLs in the row download the same bytes the row's sha256 names;
* a worker ``kill -9``-ed in the middle of a multipart upload (the uploads slowed by a TCP proxy): a new worker
  continues the upload the task's checkpoint names, sending only the parts the server lacks; the object is
  complete, its sha256 matches, and no multipart upload is left open.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from comfy_worker.handlers.base import UPLOADS_KEY
from comfy_worker.models import TaskStatus
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.test_daemon_comfy import make_mp4
from tests.integration.daemon.test_daemon_processes import worker_process
from tests.s3_server import BUCKET, CuttingProxy, MotoServer

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture
async def proxy(moto: MotoServer) -> AsyncIterator[CuttingProxy]:
    p = CuttingProxy(moto.port)
    await p.start()
    yield p
    await p.stop()


def s3_env(moto: MotoServer, prefix: str, endpoint: str | None = None) -> dict[str, str]:
    return {**moto.env(endpoint), "STORAGE_URL": f"s3://{BUCKET}/{prefix}", "SIGNED_URL_TTL_S": "600"}


async def stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return err.decode(errors="replace")


async def test_a_comfy_task_reads_an_s3_input_and_stores_outputs_behind_presigned_urls(
    harness: Harness, moto: MotoServer, tmp_path: Any
) -> None:
    clip = tmp_path / "clip.mp4"
    make_mp4(clip, frames=5)
    moto.put(BUCKET, "incoming/clip.mp4", clip.read_bytes())
    worker = await worker_process(harness, "comfy-worker-s3", **s3_env(moto, "e2e"))
    try:
        workflow = wf.video_in()
        workflow["1"]["inputs"]["video"] = f"s3://{BUCKET}/incoming/clip.mp4"
        tid = await harness.submit(workflow)
        task = await wait_task(harness.store, tid, timeout=120)
    finally:
        log = await stop(worker)
    assert task.status is TaskStatus.COMPLETE, (task.error, log[-3000:])
    [video] = task.result["outputs"]
    assert video["storage_path"].startswith(f"comfy/{tid}/") and video["content_type"] == "video/mp4"
    body = httpx.get(task.output_url, timeout=120).content  # the presigned URL, fetched by anyone without credentials
    assert task.output_url == video["url"] and "X-Amz-Signature=" in video["url"]
    assert hashlib.sha256(body).hexdigest() == video["sha256"] and len(body) == video["bytes"]
    assert moto.object(BUCKET, f"e2e/{video['storage_path']}") == body
    assert "input_fetched" in log and f"s3://{BUCKET}/incoming/clip.mp4" in log
    assert moto.keys(BUCKET, "e2e/.comfy-worker-check/") == []  # the start-up probe was removed
    assert "test-secret-key" not in log


def big_video(t: str) -> dict[str, Any]:
    """One 4096 x 4096 frame of seeded noise as an MP4: about 10 MB, the same bytes every time it runs."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "CWNoiseImage", "inputs": {"images": ["1", 0], "width": 4096, "height": 4096, "seed": 7}},
        "3": {"class_type": "CWSaveVideoMP4", "inputs": {"images": ["2", 0], "fps": 8.0, "filename_prefix": t}},
    }


def part_puts(proxy: CuttingProxy) -> set[int]:
    return {
        int(line.split("partNumber=")[1].split("&")[0].split(" ")[0])
        for line in proxy.requests
        if line.startswith("PUT ") and "partNumber=" in line
    }


async def test_a_worker_killed_mid_upload_is_continued_by_the_next_not_started_over(
    harness: Harness, moto: MotoServer, proxy: CuttingProxy
) -> None:
    prefix = "killed"
    proxy.throttle_bps = 512 * 1024  # an 8 MiB part takes 16 s: the kill lands in the middle of the upload
    s3 = moto.client()
    victim = await worker_process(harness, "comfy-worker-victim", **s3_env(moto, prefix, proxy.url))
    assert victim.stderr is not None
    drain = asyncio.create_task(victim.stderr.read())  # a full pipe must not stall the victim
    try:
        tid = await harness.submit(big_video(wf.tag()))
        # wait until the upload id is in the task's checkpoint and the server holds at least one part
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        held: dict[str, Any] = {}
        while loop.time() < deadline:
            task = await harness.store.get_task(tid)
            entries = (task.checkpoint or {}).get(UPLOADS_KEY) or {}
            if entries:
                [(_path, held)] = entries.items()
                listed = s3.list_parts(Bucket=BUCKET, Key=held["key"], UploadId=held["upload_id"])
                if listed.get("Parts"):
                    break
            assert task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING), task.error
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the upload never started")
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        # its connections die with it: bytes it had handed its kernel (up to a whole part on loopback) must not
        # reach the server through the proxy afterwards, or a part would complete after it was counted
        proxy.abort_all()
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
        victim_log = (await drain).decode(errors="replace")
    assert "storage_multipart_done" not in victim_log
    parts_total = -(-held["size"] // held["part_size"])
    listed = s3.list_parts(Bucket=BUCKET, Key=held["key"], UploadId=held["upload_id"])
    held_before = {p["PartNumber"] for p in listed["Parts"]}  # what the dead worker got onto the server
    assert 0 < len(held_before) < parts_total
    assert moto.open_uploads(BUCKET) == [held["key"]]
    proxy.throttle_bps = None
    proxy.requests.clear()
    rescuer = await worker_process(harness, "comfy-worker-rescuer", **s3_env(moto, prefix, proxy.url))
    try:
        task = await wait_task(harness.store, tid, timeout=240)
    finally:
        log = await stop(rescuer)
        (harness.storage_dir.parent / "rescuer.log").write_text(log)  # kept with the test's tmp files
    assert task.status is TaskStatus.COMPLETE and task.attempts == 2, (task.error, log[-3000:])
    [video] = task.result["outputs"]
    body = moto.object(BUCKET, held["key"])
    assert len(body) == held["size"] == video["bytes"]
    assert hashlib.sha256(body).hexdigest() == held["sha256"] == video["sha256"]
    async with httpx.AsyncClient(timeout=120) as http:  # through the proxy, served by this event loop
        fetched = (await http.get(task.output_url)).content
    assert hashlib.sha256(fetched).hexdigest() == video["sha256"]
    sent_again = part_puts(proxy)
    # only the missing parts were sent: none the dead worker had stored, and exactly as many as the rescuer did
    # not find (a part whose last bytes were forwarded just before the kill may be stored after held_before
    # was listed; the rescuer's own listing is the one it acts on)
    [held_at_resume] = [
        int(m.group(1))
        for line in log.splitlines()
        if "storage_upload_resumed" in line and (m := re.search(r"parts_held\W+(\d+)", line))
    ]
    assert held_at_resume >= len(held_before)
    assert sent_again.isdisjoint(held_before) and len(sent_again) == parts_total - held_at_resume
    assert "storage_upload_resumed" in log
    assert moto.open_uploads(BUCKET) == []
    assert UPLOADS_KEY not in (task.checkpoint or {})


async def test_a_task_cancelled_mid_upload_stops_the_upload_and_aborts_it_at_once(
    harness: Harness, moto: MotoServer, proxy: CuttingProxy
) -> None:
    prefix = "cancelled"
    proxy.throttle_bps = 512 * 1024  # the cancel lands in the middle of the upload
    s3 = moto.client()
    worker = await worker_process(harness, "comfy-worker-cancelled", **s3_env(moto, prefix, proxy.url))
    try:
        tid = await harness.submit(big_video(wf.tag()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        held: dict[str, Any] = {}
        while loop.time() < deadline:
            task = await harness.store.get_task(tid)
            entries = (task.checkpoint or {}).get(UPLOADS_KEY) or {}
            if entries:
                [(_path, held)] = entries.items()
                if s3.list_parts(Bucket=BUCKET, Key=held["key"], UploadId=held["upload_id"]).get("Parts"):
                    break
            assert task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING), task.error
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the upload never started")
        assert moto.open_uploads(BUCKET) == [held["key"]]
        await harness.store.cancel(tid, "changed my mind")
        # the worker hears of it at its next heartbeat, stops the parts and aborts the upload: not left for the
        # start-up sweep a day later
        while loop.time() < deadline and moto.open_uploads(BUCKET):
            await asyncio.sleep(0.1)
        assert moto.open_uploads(BUCKET) == []
    finally:
        log = await stop(worker)
    assert "storage_upload_discarded" in log and "storage_multipart_done" not in log, log[-3000:]
    task = await harness.store.get_task(tid)
    assert task.status is TaskStatus.CANCELLED
    assert moto.keys(BUCKET, f"{prefix}/") == []  # nothing stored half


async def test_a_task_whose_upload_fails_on_its_last_attempt_aborts_the_upload(
    harness: Harness, moto: MotoServer, proxy: CuttingProxy
) -> None:
    prefix = "failed"
    proxy.throttle_bps = 512 * 1024
    worker = await worker_process(harness, "comfy-worker-failing", **s3_env(moto, prefix, proxy.url))
    try:
        tid = await harness.submit(big_video(wf.tag()), max_attempts=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        while loop.time() < deadline:  # wait for the upload to exist
            task = await harness.store.get_task(tid)
            if (task.checkpoint or {}).get(UPLOADS_KEY):
                break
            assert task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING), task.error
            await asyncio.sleep(0.05)
        [key] = moto.open_uploads(BUCKET)
        # the store goes away: every connection through the proxy dies until the worker gives up the task
        while loop.time() < deadline and task.status is not TaskStatus.FAILED:
            proxy.abort_all()
            await asyncio.sleep(0.2)
            task = await harness.store.get_task(tid)
        assert task.status is TaskStatus.FAILED and task.attempts == 1, task.error
        # no attempt will resume it: the worker aborts it now, not the start-up sweep a day later
        while loop.time() < deadline and moto.open_uploads(BUCKET):
            await asyncio.sleep(0.1)
        assert moto.open_uploads(BUCKET) == [] and key.startswith(f"{prefix}/")
    finally:
        log = await stop(worker)
    assert "storage_upload_discarded" in log, log[-3000:]
    assert moto.keys(BUCKET, f"{prefix}/") == []


async def test_a_missing_bucket_stops_the_worker_at_start_with_one_line_naming_the_setting(
    harness: Harness, moto: MotoServer
) -> None:
    proc = await worker_process(
        harness, "comfy-worker-nobucket", **{**s3_env(moto, "x"), "STORAGE_URL": "s3://no-such-bucket/out"}
    )
    log = await asyncio.wait_for(proc.communicate(), 120)
    err = log[1].decode(errors="replace")
    assert proc.returncode != 0
    assert "bucket 'no-such-bucket' of STORAGE_URL s3://no-such-bucket/out does not exist" in err
    assert "create it or fix STORAGE_URL" in err
    assert (await harness.store.fleet_snapshot())["queue"] == []
