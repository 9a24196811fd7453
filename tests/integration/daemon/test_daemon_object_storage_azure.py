"""The daemon with STORAGE_URL=az://… on Azurite, real Postgres and the real test ComfyUI, as ``python -m
comfy_worker`` processes: a worker ``kill -9``-ed in the middle of a block blob upload (slowed by a TCP proxy) is
continued by the next one, which sends only the blocks Azurite does not hold (Get Block List), commits them, and
leaves no uncommitted block behind. The Azure twin of the S3 test in test_daemon_object_storage.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from comfy_worker.handlers.base import UPLOADS_KEY
from comfy_worker.models import TaskStatus
from comfy_worker.storage.azblocks import block_id
from tests.azurite_server import CONTAINER, Azurite
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.test_daemon_object_storage import big_video, stop
from tests.integration.daemon.test_daemon_processes import worker_process
from tests.s3_server import CuttingProxy

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture
async def proxy(azurite_server: Azurite) -> AsyncIterator[CuttingProxy]:
    p = CuttingProxy(azurite_server.port)
    await p.start()
    yield p
    await p.stop()


def az_env(azurite: Azurite, prefix: str, endpoint: str) -> dict[str, str]:
    return {**azurite.env(endpoint), "STORAGE_URL": f"az://{CONTAINER}/{prefix}", "SIGNED_URL_TTL_S": "600"}


def block_puts(proxy: CuttingProxy) -> set[str]:
    return {
        unquote(line.split("blockid=")[1].split("&")[0].split(" ")[0])
        for line in proxy.requests
        if line.startswith("PUT ") and "comp=block&" in line
    }


async def test_a_worker_killed_mid_azure_upload_is_continued_by_the_next_not_started_over(
    harness: Harness, azurite_server: Azurite, proxy: CuttingProxy
) -> None:
    prefix = "killed"
    proxy.throttle_bps = 512 * 1024  # an 8 MiB block takes 16 s: the kill lands in the middle of the upload
    victim = await worker_process(harness, "comfy-worker-az-victim", **az_env(azurite_server, prefix, proxy.url))
    assert victim.stderr is not None
    drain = asyncio.create_task(victim.stderr.read())  # a full pipe must not stall the victim
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
                if azurite_server.uncommitted(held["key"]):
                    break
            assert task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING), task.error
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the upload never started")
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        proxy.abort_all()  # its connections die with it
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
        victim_log = (await drain).decode(errors="replace")
    assert "storage_multipart_done" not in victim_log and held["backend"] == "az"
    parts_total = -(-held["size"] // held["part_size"])
    ids = {block_id(held["sha256"], held["part_size"], n) for n in range(1, parts_total + 1)}
    held_before = set(azurite_server.uncommitted(held["key"]))  # what the dead worker got onto the service
    assert 0 < len(held_before) < parts_total and held_before <= ids
    proxy.throttle_bps = None
    proxy.requests.clear()
    rescuer = await worker_process(harness, "comfy-worker-az-rescuer", **az_env(azurite_server, prefix, proxy.url))
    try:
        task = await wait_task(harness.store, tid, timeout=240)
    finally:
        log = await stop(rescuer)
        (harness.storage_dir.parent / "rescuer.log").write_text(log)
    assert task.status is TaskStatus.COMPLETE and task.attempts == 2, (task.error, log[-3000:])
    [video] = task.result["outputs"]
    body = azurite_server.container().download_blob(held["key"]).readall()
    assert len(body) == held["size"] == video["bytes"]
    assert hashlib.sha256(body).hexdigest() == held["sha256"] == video["sha256"]
    async with httpx.AsyncClient(timeout=120) as http:  # the SAS URL, through the proxy of this event loop
        fetched = (await http.get(task.output_url)).content
    assert hashlib.sha256(fetched).hexdigest() == video["sha256"]
    [held_at_resume] = [
        int(m.group(1))
        for line in log.splitlines()
        if "storage_upload_resumed" in line and (m := re.search(r"parts_held\W+(\d+)", line))
    ]
    sent_again = block_puts(proxy)
    assert held_at_resume >= len(held_before)
    assert sent_again.isdisjoint(held_before) and len(sent_again) == parts_total - held_at_resume
    assert azurite_server.uncommitted(held["key"]) == []  # every block committed, none left
    assert UPLOADS_KEY not in (task.checkpoint or {})
