"""A worker process at the queue level, for the concurrency and crash tests (run with ``python -m``).

``drain``: run N claimers (each its own registered worker) until the queue is empty; print one JSON line
with every task id each claimer completed. ``hold``: claim one task, print its id and lease token, then
sit on it forever (the test kills the process with SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from comfy_worker.models import WorkerInfo
from comfy_worker.store.base import TaskStore


def build_store(kind: str, target: str, key: str | None) -> TaskStore:
    if kind == "postgres":
        from comfy_worker.store.postgres import PostgresStore

        return PostgresStore(target, pool_max=2, listen=False)
    if kind == "sqlite":
        from comfy_worker.store.sqlite import SqliteStore

        return SqliteStore(target, poll_interval=0.05)
    from comfy_worker.store.supabase import SupabaseStore

    return SupabaseStore(target, key or "", poll_interval=0.05)


async def drain(store: TaskStore, prefix: str, claimers: int, batch: int) -> dict[str, Any]:
    done: dict[str, list[str]] = {}

    async def claimer(i: int) -> None:
        wid = f"{prefix}-{i}"
        await store.register_worker(WorkerInfo(wid, "test", 0, "test"))
        mine = done.setdefault(wid, [])
        empty = 0
        while empty < 3:
            tasks = await store.claim(wid, None, batch, 120)
            if not tasks:
                empty += 1
                await asyncio.sleep(0.05)
                continue
            empty = 0
            for t in tasks:
                await store.complete(t.task_id, t.lease_token or "", {"by": wid}, None)
                mine.append(t.task_id)

    await asyncio.gather(*(claimer(i) for i in range(claimers)))
    return done


async def hold(store: TaskStore, worker_id: str) -> None:
    await store.register_worker(WorkerInfo(worker_id, "test", 0, "test"))
    [task] = await store.claim(worker_id, None, 1, 1.0)
    print(json.dumps({"task_id": task.task_id, "lease_token": task.lease_token}), flush=True)
    await asyncio.Event().wait()


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["drain", "hold"])
    p.add_argument("--store", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--key")
    p.add_argument("--prefix", default="w")
    p.add_argument("--claimers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args(argv)
    store = build_store(a.store, a.target, a.key)
    await store.connect()
    try:
        if a.mode == "drain":
            print(json.dumps(await drain(store, a.prefix, a.claimers, a.batch)), flush=True)
        else:
            await hold(store, a.prefix)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
