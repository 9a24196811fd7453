"""The daemon with webhooks on: real Postgres, real ComfyUI (the old CPU server), a real receiver on 127.0.0.1.
Each task's end reaches the receiver, signed (checked with the ``standardwebhooks`` reference library), with
the outputs the task row records; the last events go out before the daemon exits."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from comfy_worker.models import TaskStatus
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task

pytestmark = pytest.mark.comfyui

SECRET = "whsec_" + base64.b64encode(b"daemon-webhook-test-secret-0123").decode()


async def test_each_task_end_reaches_the_receiver_signed(harness: Harness) -> None:
    got: list[dict] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        got.append(Webhook(SECRET).verify(body, dict(request.headers)))
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    try:
        settings = harness.settings(WEBHOOK_URL=url, WEBHOOK_SECRET=SECRET)
        daemon = await harness.start_daemon(settings=settings)
        await asyncio.wait_for(daemon.webhooks.ready.wait(), 30)
        ok = await harness.submit(wf.slow(0.2))
        bad = await harness.submit(wf.raises("no good"), max_attempts=1)
        done, failed = await wait_task(harness.store, ok), await wait_task(harness.store, bad)
        assert done.status is TaskStatus.COMPLETE and failed.status is TaskStatus.FAILED
        while len(got) < 2:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 30)
        by_task = {e["data"]["task_id"]: e for e in got}
        assert by_task[ok]["type"] == "task.completed" and by_task[bad]["type"] == "task.failed"
        outputs = by_task[ok]["data"]["result"]["outputs"]
        assert outputs == json.loads(json.dumps(done.result["outputs"]))
        assert all(o["url"] and o["bytes"] > 0 and len(o["sha256"]) == 64 for o in outputs)
        assert by_task[ok]["data"]["output_url"] == done.output_url
        assert "no good" in by_task[bad]["data"]["error"]
        # the daemon's last task: its event goes out before the daemon exits (drain), not left to another worker
        last = await harness.submit(wf.slow(0.1))
        await wait_task(harness.store, last)
        daemon.request_stop("test")
        await asyncio.wait_for(harness.daemons[-1][1], 60)
        assert last in {e["data"]["task_id"] for e in got}
    finally:
        await runner.cleanup()
