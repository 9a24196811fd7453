"""A worker process at the queue level, for the concurrency and crash tests (run with ``python -m``).

``drain``: run N claimers (each its own registered worker) until the queue is empty; print one JSON line
with every task id each claimer completed. ``--types a,b;b,c;…``: claimer i claims only the i-th (cyclically)
comma-separated list of task types (as TASK_TYPES narrows a worker). ``hold``: claim one task, print its id
and lease token, then sit on it forever (the test kills the process with SIGKILL). ``work``: a worker as the
daemon is to the queue (Postgres presence lock, heartbeats) that claims one task and "runs" it for
``--run-s`` seconds, then completes it; it prints a JSON line per event (claimed, heartbeat lost, completed or
rejected), so a test can stop and continue it and see what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from comfy_worker.models import WorkerInfo
from comfy_worker.store.base import TaskStore


def build_store(kind: str, target: str, key: str | None, presence: bool = False) -> TaskStore:
    if kind == "postgres":
        from comfy_worker.store.postgres import PostgresStore

        return PostgresStore(target, pool_max=2, listen=False, presence=presence)
    if kind == "sqlite":
        from comfy_worker.store.sqlite import SqliteStore

        return SqliteStore(target, poll_interval=0.05)
    from comfy_worker.store.supabase import SupabaseStore

    return SupabaseStore(target, key or "", poll_interval=0.05)


async def drain(store: TaskStore, prefix: str, claimers: int, batch: int,
                types: list[list[str]] | None = None) -> dict[str, Any]:
    done: dict[str, list[str]] = {}

    async def claimer(i: int) -> None:
        wid = f"{prefix}-{i}"
        mine_types = types[i % len(types)] if types else None
        await store.register_worker(WorkerInfo(wid, "test", 0, "test", tuple(mine_types or ())))
        mine = done.setdefault(wid, [])
        empty = 0
        while empty < 3:
            tasks = await store.claim(wid, mine_types, batch, 120)
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


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def work(store: TaskStore, worker_id: str, lease_s: float, heartbeat_s: float, run_s: float) -> None:
    from comfy_worker.errors import LeaseLost

    await store.register_worker(WorkerInfo(worker_id, "test", 0, "test"))
    tasks: list[Any] = []
    while not tasks:
        tasks = await store.claim(worker_id, None, 1, lease_s)
        if not tasks:
            await asyncio.sleep(0.05)
    task = tasks[0]
    emit(event="claimed", task_id=task.task_id, lease_token=task.lease_token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + run_s
    while loop.time() < deadline:  # the "work", with heartbeats; a lost lease stops it at once
        await asyncio.sleep(min(heartbeat_s, max(0.0, deadline - loop.time())))
        reply = await store.heartbeat(worker_id, lease_s, {}, [task.task_id])
        if task.task_id in reply.lost:
            emit(event="lost", task_id=task.task_id)
            return
    try:
        await store.complete(task.task_id, task.lease_token or "", {"by": worker_id}, None)
        emit(event="completed", task_id=task.task_id)
    except LeaseLost as exc:
        emit(event="rejected", task_id=task.task_id, error=str(exc))


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["drain", "hold", "work"])
    p.add_argument("--store", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--key")
    p.add_argument("--prefix", default="w")
    p.add_argument("--claimers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--types", help="drain: task types per claimer, 'a,b;b,c' (claimer i takes list i mod count)")
    p.add_argument("--presence", action="store_true", help="hold the Postgres presence lock, as the daemon does")
    p.add_argument("--lease-s", type=float, default=60.0)
    p.add_argument("--heartbeat-s", type=float, default=0.5)
    p.add_argument("--run-s", type=float, default=5.0)
    a = p.parse_args(argv)
    store = build_store(a.store, a.target, a.key, presence=a.presence)
    await store.connect()
    try:
        if a.mode == "drain":
            types = [g.split(",") for g in a.types.split(";")] if a.types else None
            print(json.dumps(await drain(store, a.prefix, a.claimers, a.batch, types)), flush=True)
        elif a.mode == "work":
            await work(store, a.prefix, a.lease_s, a.heartbeat_s, a.run_s)
        else:
            await hold(store, a.prefix)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
