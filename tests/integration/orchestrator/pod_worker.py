"""What a stand-in "pod" runs for now: a tiny worker loop on the real queue (PostgresStore).

Registers as $WORKER_ID, heartbeats every $HEARTBEAT_INTERVAL, claims one task at a time, "runs" it for
``params.seconds``, completes it, and honours draining: when its row is 'draining' it stops claiming, finishes
what it holds, deregisters ('stopped') and exits. The real daemon (python -m comfy_worker) replaces it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from comfy_worker.models import WorkerInfo, WorkerStatus
from comfy_worker.store.postgres import PostgresStore


async def main() -> None:
    worker_id = os.environ["WORKER_ID"]
    lease = float(os.environ.get("LEASE_SECONDS", "2"))
    beat_every = float(os.environ.get("HEARTBEAT_INTERVAL", "0.3"))
    store = PostgresStore(os.environ["DATABASE_URL"], pool_min=1, pool_max=2)
    await store.connect()
    await store.register_worker(WorkerInfo(worker_id, socket.gethostname(), os.getpid(), "pod-worker"))
    held: list[str] = []
    draining = asyncio.Event()

    async def beat() -> None:
        while True:
            reply = await store.heartbeat(worker_id, lease, task_ids=list(held))
            if reply.worker_status == WorkerStatus.DRAINING:
                draining.set()
            await asyncio.sleep(beat_every)

    beater = asyncio.create_task(beat())
    try:
        while not draining.is_set():
            tasks = await store.claim(worker_id, None, 1, lease)
            if not tasks:
                await store.wait_for_work(0.3)
                continue
            task = tasks[0]
            held.append(task.task_id)
            await asyncio.sleep(float(task.params.get("seconds", 0.2)))
            await store.complete(task.task_id, str(task.lease_token), {"by": worker_id})
            held.remove(task.task_id)
    finally:
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater
        await store.deregister_worker(worker_id)
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
