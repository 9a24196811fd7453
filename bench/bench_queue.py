"""Queue benchmark on local PostgreSQL: claim+complete cycles per second and pickup latency.

    .venv/bin/python bench/bench_queue.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

* Throughput: C claimers (C = 1, 8, 32), each its own worker and connection, drain a pre-filled queue with
  claim(n=1) + complete. Baseline in the same run: two bare ``SELECT 1`` round trips per cycle on the same
  number of connections, the floor any two-call protocol pays; the ratio is what the queue logic costs.
* Pickup latency: a producer inserts tasks one at a time at random gaps; a claimer waits on the store's
  wake-up (LISTEN/NOTIFY) or on its polling interval; latency = claimed - INSERT committed.

Prints a table; targets: >= 2,000 cycles/s at 8 claimers; LISTEN pickup p50 <= 10 ms, p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid

import asyncpg
from _common import admin, drop_database, fresh_database, pct

from comfy_worker.models import WorkerInfo
from comfy_worker.store.postgres import PostgresStore


async def fill(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("truncate tasks")
        await conn.execute(
            "insert into tasks (task_type, params) select 'comfy', jsonb_build_object('i', g) "
            "from generate_series(1, $1) g", n)
        await conn.execute("analyze tasks")  # plans as production sees them (an unanalyzed table hid a bad one)
    finally:
        await conn.close()


async def throughput(dsn: str, claimers: int, n_tasks: int) -> float:
    await fill(dsn, n_tasks)
    return await drain_filled(dsn, claimers, n_tasks)


async def drain_filled(dsn: str, claimers: int, n_tasks: int, batch: int = 1) -> float:
    """Cycles/s of ``claimers`` claimers draining a queue of ``n_tasks`` filled beforehand, each claiming
    ``batch`` tasks a call and completing them one by one."""
    stores = [PostgresStore(dsn, pool_min=1, pool_max=1, listen=False) for _ in range(claimers)]
    for i, s in enumerate(stores):
        await s.connect()
        await s.register_worker(WorkerInfo(f"bench-{i}", "bench", 0, "bench"))

    async def run(i: int, s: PostgresStore) -> int:
        done = 0
        while True:
            tasks = await s.claim(f"bench-{i}", None, batch, 60)
            if not tasks:
                return done
            for t in tasks:
                await s.complete(t.task_id, t.lease_token or "", {}, None)
                done += 1

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(run(i, s) for i, s in enumerate(stores)))
    elapsed = time.perf_counter() - t0
    assert sum(counts) == n_tasks, (sum(counts), n_tasks)
    for s in stores:
        await s.close()
    return n_tasks / elapsed


async def baseline(dsn: str, conns: int, cycles: int) -> float:
    """Cycles/s if a cycle were just two trivial round trips."""
    pool = [await asyncpg.connect(dsn) for _ in range(conns)]
    per = cycles // conns

    async def run(c: asyncpg.Connection) -> None:
        for _ in range(per):
            await c.fetchval("select 1")
            await c.fetchval("select 1")

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in pool))
    elapsed = time.perf_counter() - t0
    for c in pool:
        await c.close()
    return per * conns / elapsed


async def pickup(dsn: str, *, listen: bool, poll_interval: float, n: int) -> list[float]:
    await fill(dsn, 0)
    store = PostgresStore(dsn, listen=listen)
    await store.connect()
    await store.register_worker(WorkerInfo("pickup", "bench", 0, "bench"))
    if listen:
        assert await store.wait_listening(10)
    inserted: dict[str, float] = {}
    latencies: list[float] = []
    stop = asyncio.Event()

    async def claimer() -> None:
        while not stop.is_set() or len(latencies) < n:
            tasks = await store.claim("pickup", None, 1, 60)
            now = time.perf_counter()
            for t in tasks:
                latencies.append(now - inserted[t.task_id])
                await store.complete(t.task_id, t.lease_token or "", {}, None)
            if not tasks:
                await store.wait_for_work(poll_interval)

    producer_conn = await asyncpg.connect(dsn)
    ctask = asyncio.create_task(claimer())
    rng = random.Random(7)
    for _ in range(n):
        await asyncio.sleep(rng.uniform(0.005, 0.03))
        tid = uuid.uuid4().hex
        await producer_conn.execute("insert into tasks (task_id, task_type, params) values ($1, 'comfy', '{}')", tid)
        inserted[tid] = time.perf_counter()
    stop.set()
    await asyncio.wait_for(ctask, 60)
    await producer_conn.close()
    await store.close()
    return latencies


def pgbench_cycles(dsn: str, clients: int, seconds: int = 8) -> float | None:
    """The same claim_tasks + complete_task pair driven by pgbench's C client: the queue's own capacity,
    without our Python client in the loop. None when pgbench is not installed."""
    import glob
    import re
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("pgbench") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))), None)
    if exe is None:
        return None
    script = (
        "select task_id, lease_token from claim_tasks('bench-' || :client_id, null, 1, 60) \\gset\n"
        "select complete_task(':task_id', ':lease_token'::uuid, '{}', null) is null;\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        out = subprocess.run([exe, "-n", "-f", f.name, "-c", str(clients), "-j", "2", "-T", str(seconds), dsn],
                             capture_output=True, text=True, check=False)
    m = re.search(r"tps = ([0-9.]+)", out.stdout)
    return float(m.group(1)) if m else None


def fsync_ms(n: int = 100) -> float:
    """Time of one small write + fdatasync in the directory PostgreSQL keeps its data in, if we can write there."""
    import os
    import tempfile

    for d in ("/var/lib/postgresql", tempfile.gettempdir()):
        try:
            fd, path = tempfile.mkstemp(dir=d)
        except OSError:
            continue
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                os.write(fd, b"x" * 8192)
                os.fdatasync(fd)
            return (time.perf_counter() - t0) / n * 1e3
        finally:
            os.close(fd)
            os.unlink(path)
    return float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--tasks", type=int, default=6000)
    ap.add_argument("--pickups", type=int, default=300)
    a = ap.parse_args()
    db, dsn = await fresh_database(a.dsn, "bench_queue")
    try:
        print(f"{'claimers':>8} {'cycles/s':>10} {'baseline 2xSELECT1/s':>22} {'ratio':>6}")
        for c in (1, 8, 32):
            n = a.tasks if c > 1 else a.tasks // 3
            rate = await throughput(dsn, c, n)
            base = await baseline(dsn, c, n)
            print(f"{c:>8} {rate:>10.0f} {base:>22.0f} {rate / base:>6.2f}")
        await fill(dsn, 400_000)  # enough that pgbench never runs the queue dry
        conn = await asyncpg.connect(dsn)
        await conn.execute("select register_worker('bench-' || g, 'bench', 0, 'bench') from generate_series(0, 31) g")
        await conn.close()
        for c in (1, 8):
            tps = pgbench_cycles(dsn, c)
            if tps is not None:
                label = f"pgbench {c}"
                print(f"{label:>8} {tps:>10.0f} {'':>22} {'':>6}   (same SQL calls, pgbench's C client)")
        # The same 8-claimer run with commits that do not wait for the WAL flush: not a recommendation (a
        # claim lost in a crash could run a task twice), but it shows how much of the cycle is the disk.
        await admin(a.dsn, f'alter database "{db}" set synchronous_commit = off')
        rate = await throughput(dsn, 8, a.tasks)
        base = await baseline(dsn, 8, a.tasks)
        print(f"{'8 async':>8} {rate:>10.0f} {base:>22.0f} {rate / base:>6.2f}   (synchronous_commit=off)")
        await admin(a.dsn, f'alter database "{db}" reset synchronous_commit')
        print(f"disk: one 8 KiB write + fdatasync takes {fsync_ms():.2f} ms here (each durable commit pays one)")
        print()
        print(f"{'pickup':>22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, listen, poll in (("LISTEN (poll 2 s)", True, 2.0), ("polling every 0.5 s", False, 0.5)):
            lat = await pickup(dsn, listen=listen, poll_interval=poll, n=a.pickups if listen else a.pickups // 3)
            print(f"{label:>22} {pct(lat, .5) * 1e3:>8.1f} {pct(lat, .99) * 1e3:>8.1f} {max(lat) * 1e3:>8.1f}"
                  f"   (n={len(lat)}, mean {statistics.mean(lat) * 1e3:.1f} ms)")
    finally:
        await drop_database(a.dsn, db)


if __name__ == "__main__":
    asyncio.run(main())
