"""Our queue beside procrastinate and pgqueuer, on the same PostgreSQL, in one run.

    .venv/bin/python bench/bench_queue_peers.py [--jobs 4000] [--pickups 100]

The peers are installed for the benchmark only (``pip install -e '.[bench]'``); they are not dependencies.

The same work for each: N jobs queued in advance, K workers (K = 1, 8), each taking one job at a time and
marking it done, until the queue is empty; one database per system, on the same server.

* **ours**: K claimers, ``claim(n=1)`` + ``complete`` (one connection each, as ``bench/bench_queue.py``).
* **procrastinate**: one worker with ``concurrency=K`` (K sub-workers, each fetching one job at a time) on a
  pool of K + 1 connections; defaults otherwise (jobs kept, events recorded).
* **pgqueuer one at a time**: K queue managers, one connection each, ``batch_size=1``.
* **pgqueuer default**: the same with its default ``batch_size=10``: a dequeue claims up to 10 jobs, and
  completions are buffered and written in batches (flushed every 0.1 s or when 10 are waiting).

Besides jobs/s, what each job costs the server, from its database's counters around the run (workers'
connections closed first, so every backend has flushed its statistics): transactions (commits), rows
inserted / updated (how many of them HOT) / deleted, and WAL bytes of records on that database's relations
(pg_walinspect; the server is shared, so the raw WAL position would count other databases' writes), less
full-page images, which depend on when the last checkpoint happened rather than on the queue.

Then idle pickup latency: one idle worker (K = 1) listening as each system does by default, jobs enqueued one
at a time through each system's own API at random gaps; latency = job handler entered - enqueue returned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_queue
from _common import admin, database_dsn, drop_database, pct

from comfy_worker.models import WorkerInfo
from comfy_worker.store.postgres import PostgresStore

try:
    import pgqueuer  # noqa: F401
    import procrastinate  # noqa: F401
except ImportError:
    sys.exit("bench_queue_peers needs the peers: .venv/bin/pip install -e '.[bench]'")

from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode
from procrastinate import App, PsycopgConnector

logging.getLogger("procrastinate").setLevel(logging.ERROR)
logging.getLogger("pgqueuer").setLevel(logging.WARNING)


@dataclass
class Cost:
    """Per job, from the database's counters."""

    commits: float = 0
    ins: float = 0
    upd: float = 0
    hot: float = 0
    dele: float = 0
    wal: float = 0

    def row(self) -> str:
        hot = f"{self.hot / self.upd * 100:.0f}%" if self.upd else "-"
        return (f"{self.commits:>7.2f} {self.ins:>5.2f} {self.upd:>5.2f} {hot:>5} {self.dele:>5.2f} "
                f"{self.wal:>8.0f}")


async def _counters(admin_dsn: str, db: str) -> dict[str, Any]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("select pg_stat_clear_snapshot()")
        commits = await conn.fetchval("select xact_commit from pg_stat_database where datname = $1", db)
        lsn = await conn.fetchval("select pg_current_wal_lsn()::text")
    finally:
        await conn.close()
    conn = await asyncpg.connect(database_dsn(admin_dsn, db))
    try:
        tables = await conn.fetchrow(
            "select coalesce(sum(n_tup_ins), 0) ins, coalesce(sum(n_tup_upd), 0) upd,"
            " coalesce(sum(n_tup_hot_upd), 0) hot, coalesce(sum(n_tup_del), 0) dele from pg_stat_user_tables")
        oid = await conn.fetchval("select oid from pg_database where datname = current_database()")
    finally:
        await conn.close()
    return {"commits": commits, "lsn": lsn, "oid": oid, **dict(tables)}


async def _cost(admin_dsn: str, db: str, before: dict[str, Any], n: int) -> Cost:
    await asyncio.sleep(0.5)  # exited backends flush their statistics
    after = await _counters(admin_dsn, db)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("create extension if not exists pg_walinspect")
        wal = await conn.fetchval(
            "select coalesce(sum(record_length - fpi_length), 0)"
            " from pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)"
            " where block_ref like $3", before["lsn"], after["lsn"], f"%rel %/{after['oid']}/%")
    finally:
        await conn.close()
    return Cost(
        commits=(after["commits"] - before["commits"] - 2) / n,  # less the two counter-reading transactions
        ins=(after["ins"] - before["ins"]) / n, upd=(after["upd"] - before["upd"]) / n,
        hot=(after["hot"] - before["hot"]) / n, dele=(after["dele"] - before["dele"]) / n, wal=wal / n,
    )


def latencies(queued: dict[Any, float], seen: dict[Any, float]) -> list[float]:
    """Job entered - enqueue call returned; 0 when the worker had it before the producer heard its commit."""
    assert set(seen) == set(queued), "jobs lost or seen twice"
    return [max(0.0, seen[k] - queued[k]) for k in queued]


# --- the systems -------------------------------------------------------------------------------------------


class Ours:
    def __init__(self, dsn: str, batch: int = 1) -> None:
        self.dsn = dsn
        self.batch = batch
        self.name = "ours" if batch == 1 else f"ours, claim(n={batch})"

    async def setup(self) -> None:
        s = PostgresStore(self.dsn, listen=False)
        await s.connect()
        await s.migrate()
        await s.close()

    async def fill(self, n: int) -> None:
        await bench_queue.fill(self.dsn, n)

    async def drain(self, k: int, n: int) -> float:
        return await bench_queue.drain_filled(self.dsn, k, n, self.batch)

    async def pickup(self, n: int, rng: random.Random) -> list[float]:
        await bench_queue.fill(self.dsn, 0)
        store = PostgresStore(self.dsn)
        await store.connect()
        await store.register_worker(WorkerInfo("pickup", "bench", 0, "bench"))
        assert await store.wait_listening(10)
        inserted: dict[str, float] = {}
        seen: dict[str, float] = {}

        async def worker() -> None:
            while len(seen) < n:
                for t in await store.claim("pickup", None, 1, 60):
                    seen[t.task_id] = time.perf_counter()
                    await store.complete(t.task_id, t.lease_token or "", {}, None)
                else:
                    await store.wait_for_work(2.0)

        producer = await asyncpg.connect(self.dsn)
        w = asyncio.create_task(worker())
        for _ in range(n):
            await asyncio.sleep(rng.uniform(0.005, 0.03))
            tid = uuid.uuid4().hex
            await producer.execute("insert into tasks (task_id, task_type, params) values ($1, 'comfy', '{}')", tid)
            inserted[tid] = time.perf_counter()
        await asyncio.wait_for(w, 60)
        await producer.close()
        await store.close()
        return latencies(inserted, seen)


class Procrastinate:
    name = "procrastinate"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: dict[int, float] = {}
        self.on_job: Callable[[int], None] = lambda _i: None

    def app(self, pool: int) -> App:
        conninfo = self.dsn.replace("postgresql://", "postgres://")
        app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=pool, max_size=pool))

        @app.task(name="noop", queue="bench")
        async def noop(i: int) -> None:
            self.on_job(i)

        self.noop = noop
        return app

    async def setup(self) -> None:
        app = self.app(1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def fill(self, n: int) -> None:
        app = self.app(2)
        async with app.open_async():
            conn = await asyncpg.connect(self.dsn)
            await conn.execute("truncate procrastinate_events, procrastinate_jobs cascade")
            await conn.close()
            for start in range(0, n, 1000):
                await self.noop.batch_defer_async(*({"i": i} for i in range(start, min(n, start + 1000))))
            conn = await asyncpg.connect(self.dsn)
            await conn.execute("analyze")
            await conn.close()

    async def drain(self, k: int, n: int) -> float:
        app = self.app(k + 1)
        done = 0

        def count(_i: int) -> None:
            nonlocal done
            done += 1

        self.on_job = count
        async with app.open_async():
            t0 = time.perf_counter()
            await app.run_worker_async(queues=["bench"], concurrency=k, wait=False, install_signal_handlers=False)
            elapsed = time.perf_counter() - t0
        assert done == n, (done, n)
        return n / elapsed

    async def pickup(self, n: int, rng: random.Random) -> list[float]:
        await self.fill(0)
        app = self.app(3)
        seen: dict[int, float] = {}
        deferred: dict[int, float] = {}
        all_in = asyncio.Event()

        def record(i: int) -> None:
            seen[i] = time.perf_counter()
            if len(seen) == n:
                all_in.set()

        self.on_job = record
        async with app.open_async():
            worker = asyncio.create_task(app.run_worker_async(queues=["bench"], concurrency=1, wait=True,
                                                              install_signal_handlers=False))
            await asyncio.sleep(1.0)  # listening
            for i in range(n):
                await asyncio.sleep(rng.uniform(0.005, 0.03))
                await self.noop.defer_async(i=i)
                deferred[i] = time.perf_counter()
            await asyncio.wait_for(all_in.wait(), 60)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        return latencies(deferred, seen)


class PgQueuer:
    def __init__(self, dsn: str, batch_size: int) -> None:
        self.dsn = dsn
        self.batch_size = batch_size
        self.name = "pgqueuer default (batch 10)" if batch_size == 10 else f"pgqueuer batch {batch_size}"

    async def setup(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def fill(self, n: int) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("truncate pgqueuer, pgqueuer_log")
            q = Queries(AsyncpgDriver(conn))
            for start in range(0, n, 1000):
                m = min(n, start + 1000) - start
                await q.enqueue(["noop"] * m, [str(i).encode() for i in range(start, start + m)], [0] * m)
            await conn.execute("analyze")
        finally:
            await conn.close()

    async def _manager(self, on_job: Callable[[Job], Awaitable[None]]) -> tuple[QueueManager, asyncpg.Connection]:
        conn = await asyncpg.connect(self.dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        qm.entrypoint("noop")(on_job)
        return qm, conn

    async def drain(self, k: int, n: int) -> float:
        done = 0

        async def job(_job: Job) -> None:
            nonlocal done
            done += 1

        managers = [await self._manager(job) for _ in range(k)]
        t0 = time.perf_counter()
        await asyncio.gather(*(qm.run(batch_size=self.batch_size, mode=QueueExecutionMode.drain,
                                      dequeue_timeout=timedelta(seconds=0.2)) for qm, _ in managers))
        elapsed = time.perf_counter() - t0
        for _qm, conn in managers:
            await conn.close()
        assert done == n, (done, n)
        return n / elapsed

    async def pickup(self, n: int, rng: random.Random) -> list[float]:
        await self.fill(0)
        seen: dict[int, float] = {}
        queued: dict[int, float] = {}
        all_in = asyncio.Event()

        async def job(j: Job) -> None:
            seen[int(j.payload or b"0")] = time.perf_counter()
            if len(seen) == n:
                all_in.set()

        qm, conn = await self._manager(job)
        runner = asyncio.create_task(qm.run(batch_size=self.batch_size))
        producer = await asyncpg.connect(self.dsn)
        q = Queries(AsyncpgDriver(producer))
        await asyncio.sleep(1.0)  # listening
        for i in range(n):
            await asyncio.sleep(rng.uniform(0.005, 0.03))
            await q.enqueue("noop", str(i).encode())
            queued[i] = time.perf_counter()
        await asyncio.wait_for(all_in.wait(), 60)
        qm.shutdown.set()
        await asyncio.wait_for(runner, 30)
        await conn.close()
        await producer.close()
        return latencies(queued, seen)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--pickups", type=int, default=100)
    a = ap.parse_args()
    run = uuid.uuid4().hex[:6]
    dbs = {key: f"bench_peers_{key}_{run}" for key in ("ours", "procrastinate", "pgqueuer")}
    for db in dbs.values():
        await admin(a.dsn, f'create database "{db}"')
    systems: list[Any] = [
        Ours(database_dsn(a.dsn, dbs["ours"])),
        Ours(database_dsn(a.dsn, dbs["ours"]), batch=10),
        Procrastinate(database_dsn(a.dsn, dbs["procrastinate"])),
        PgQueuer(database_dsn(a.dsn, dbs["pgqueuer"]), 1),
        PgQueuer(database_dsn(a.dsn, dbs["pgqueuer"]), 10),
    ]
    db_of = {id(s): dbs[s.name.split()[0].rstrip(",")] for s in systems}
    try:
        for i in (0, 2, 3):
            await systems[i].setup()
        print(f"{a.jobs} jobs per run; per job: commits, rows inserted / updated (HOT share) / deleted, WAL bytes on "
              "the system's relations", flush=True)
        print(f"{'system':<28} {'K':>2} {'jobs/s':>7} {'commits':>7} {'ins':>5} {'upd':>5} {'hot':>5} {'del':>5} "
              f"{'WAL B':>8}", flush=True)
        for k in (1, 8):
            for s in systems:
                n = a.jobs if k > 1 else a.jobs // 2
                await s.fill(n)
                # a temporary replication slot keeps the run's WAL until pg_walinspect has read it
                keeper = await asyncpg.connect(a.dsn)
                await keeper.execute(f"select pg_create_physical_replication_slot('bench_peers_{run}', true, true)")
                try:
                    before = await _counters(a.dsn, db_of[id(s)])
                    rate = await s.drain(k, n)
                    cost = await _cost(a.dsn, db_of[id(s)], before, n)
                finally:
                    await keeper.close()  # drops the slot
                print(f"{s.name:<28} {k:>2} {rate:>7.0f} {cost.row()}", flush=True)
        print()
        print(f"{'idle pickup (K = 1)':<28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}", flush=True)
        for s in systems:
            if s.name.startswith("ours,"):
                continue  # the same claim path as "ours" when idle
            lat = await s.pickup(a.pickups, random.Random(7))
            print(f"{s.name:<28} {pct(lat, .5) * 1e3:>8.1f} {pct(lat, .99) * 1e3:>8.1f} "
                  f"{max(lat) * 1e3:>8.1f}   (n={len(lat)}, mean {statistics.mean(lat) * 1e3:.1f} ms)", flush=True)
    finally:
        for db in dbs.values():
            await drop_database(a.dsn, db)


if __name__ == "__main__":
    asyncio.run(main())
