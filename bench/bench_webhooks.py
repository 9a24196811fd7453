"""How long from a task's end to the receiver's 200? (issue 22)

    .venv/bin/python bench/bench_webhooks.py [--n 200]

A receiver on 127.0.0.1 answers 200 at once and notes when each event's POST arrived. For each store (real
PostgreSQL; the embedded SQLite file), N tasks are claimed and completed one after another by a worker whose
delivery loop runs beside it (as in the daemon: woken when its own task ends); the delay is from the moment
``complete`` returned (the transaction, with its outbox row, committed) to the receiver's answer. Then the
same with the tasks completed by a worker that has no delivery loop, so a second worker's loop (polling every
WEBHOOK_POLL_S = 2 s, the default) delivers them: the path of an event whose worker died right after
completing. Baseline in the same run: the same signed POST sent straight to the receiver with httpx (no queue),
so the table shows what the outbox adds. Prints p50 / p99 / max in milliseconds.

``--queue-cost``: what the outbox trigger costs the queue's hot path. 8 claimers drain 3,000 tasks with claim +
complete (bench_queue.py's throughput phase) three ways, alternating, twice: the trigger disabled (the queue
before 008), the trigger on but no destination (a fleet without webhooks: it reads webhook_config and returns),
and every completion writing its event. Prints cycles/s and each ÷ the disabled trigger.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import drop_database, fresh_database, pct  # noqa: E402
from bench_queue import drain_filled, fill  # noqa: E402

from comfy_worker.config import load_settings  # noqa: E402
from comfy_worker.logs import configure_logging  # noqa: E402
from comfy_worker.models import NewTask, WorkerInfo  # noqa: E402
from comfy_worker.store.base import TaskStore  # noqa: E402
from comfy_worker.store.postgres import PostgresStore  # noqa: E402
from comfy_worker.store.sqlite import SqliteStore  # noqa: E402
from comfy_worker.webhooks import WebhookDispatcher, sign  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-webhooks-secret-0123456789").decode()


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.event = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.arrived[body["data"]["task_id"]] = time.perf_counter()
        self.event.set()
        return web.Response(status=200)

    async def wait_for(self, task_id: str) -> float:
        while task_id not in self.arrived:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 30)
        return self.arrived[task_id]


async def timed_ends(
    store: TaskStore, receiver: Receiver, n: int, tag: str, wake: WebhookDispatcher | None
) -> list[float]:
    wid = f"bench-{tag}"
    await store.register_worker(WorkerInfo(wid, "bench", 1, "bench", ("bench",), {}))
    delays = []
    for i in range(n):
        if wake is None:  # ends at random moments of the other worker's poll cycle, not in step with it
            await asyncio.sleep(random.uniform(0, 2))
        task = await store.enqueue(NewTask("bench", {"i": i}))
        [t] = await store.claim(wid, ["bench"], 1, 60)
        await store.complete(task.task_id, t.lease_token or "", {"outputs": []})
        t0 = time.perf_counter()
        if wake is not None:
            wake.wake()  # what the daemon does when a task of its own ends
        delays.append((await receiver.wait_for(task.task_id)) - t0)
    return delays


async def direct(url: str, n: int) -> list[float]:
    keys = [base64.b64decode(SECRET.removeprefix("whsec_"))]
    out = []
    async with httpx.AsyncClient() as client:
        for i in range(n):
            body = json.dumps({"type": "task.completed", "timestamp": "x", "data": {"task_id": f"direct-{i}"}}).encode()
            t0 = time.perf_counter()
            r = await client.post(url, content=body, headers=sign(keys, f"msg_{i}", int(time.time()), body))
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def row(label: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"{label:<48} {pct(ms, 0.5):>8.1f} {pct(ms, 0.99):>8.1f} {max(ms):>8.1f}"


async def one_store(kind: str, store_factory: Any, receiver: Receiver, url: str, n: int) -> list[str]:
    fast = load_settings({"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET}, dotenv=None)
    stores = [store_factory() for _ in range(2)]
    for s in stores:
        await s.connect()
    await stores[0].migrate()
    lines = []
    try:
        own = WebhookDispatcher(fast, stores[0], "bench-own")
        loop_task = asyncio.create_task(own.run())
        await timed_ends(stores[0], receiver, 5, f"{kind}-warm", own)
        delays = await timed_ends(stores[0], receiver, n, kind, own)
        lines.append(row(f"{kind}: same worker (woken at its task's end)", delays))
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        other = WebhookDispatcher(fast, stores[1], "bench-other")
        loop_task = asyncio.create_task(other.run())
        k = max(n // 4, 20)
        delays = await timed_ends(stores[0], receiver, k, f"{kind}-o", None)
        lines.append(row(f"{kind}: another worker (polls every 2 s)", delays))
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
    finally:
        for s in stores:
            await s.close()
    return lines


async def queue_cost(admin_dsn: str, n_tasks: int = 3000, claimers: int = 8) -> None:
    import asyncpg

    db, dsn = await fresh_database(admin_dsn, "bench_hooks_q")
    modes = {
        "trigger disabled (before 008)":
            "alter table tasks disable trigger tasks_webhook_end; delete from webhook_config",
        "trigger on, no destination": "alter table tasks enable trigger tasks_webhook_end; delete from webhook_config",
        "every completion writes an event": "alter table tasks enable trigger tasks_webhook_end;"
        " insert into webhook_config (id, default_url) values (1, true)",
    }
    rates: dict[str, list[float]] = {m: [] for m in modes}
    try:
        conn = await asyncpg.connect(dsn)
        try:
            for _round in range(2):
                for mode, sql in modes.items():
                    await conn.execute(sql + "; truncate webhook_events")
                    await fill(dsn, n_tasks)
                    rates[mode].append(await drain_filled(dsn, claimers, n_tasks))
                    await conn.execute("truncate workers")
        finally:
            await conn.close()
    finally:
        await drop_database(admin_dsn, db)
    base = sum(rates["trigger disabled (before 008)"]) / 2
    print(f"claim + complete cycles/s, {claimers} claimers, {n_tasks} tasks, two rounds each (alternating)")
    for mode, xs in rates.items():
        mean = sum(xs) / len(xs)
        print(f"  {mode:<34} {'  '.join(f'{x:7.0f}' for x in xs)}   mean {mean:7.0f}   ÷ disabled {mean / base:.3f}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--queue-cost", action="store_true", help="measure the trigger's cost on claim + complete instead")
    a = ap.parse_args()
    configure_logging("warning", "json")
    if a.queue_cost:
        await queue_cost(a.admin_dsn)
        return
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    db, dsn = await fresh_database(a.admin_dsn, "bench_hooks")
    lines = [row("baseline: the signed POST alone (httpx)", await direct(url, a.n))]
    try:
        lines += await one_store("postgres", lambda: PostgresStore(dsn), receiver, url, a.n)
        with tempfile.TemporaryDirectory() as tmp:
            lines += await one_store("sqlite", lambda: SqliteStore(Path(tmp) / "q.db"), receiver, url, a.n)
    finally:
        await drop_database(a.admin_dsn, db)
        await runner.cleanup()
    print(f"delay from complete() returning to the receiver's 200, ms (N = {a.n} per row; 'another worker': N/4)")
    print(f"{'':<48} {'p50':>8} {'p99':>8} {'max':>8}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
