"""Queue benchmark on local PostgreSQL: claim+complete cycles per second and pickup latency.

    .venv/bin/python bench/bench_queue.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

* Throughput: C claimers (C = 1, 8, 32), each its own worker and connection, drain a pre-filled queue with
  claim(n=1) + complete. Baseline in the same run: two bare ``SELECT 1`` round trips per cycle on the same
  number of connections, the floor any two-call protocol pays; the ratio is what the queue logic costs.
* Pickup latency: a producer inserts tasks one at a time at random gaps; a claimer waits on the store's
  wake-up (LISTEN/NOTIFY) or on its polling interval; latency = claimed - INSERT committed.
* Narrowed claims (issue 20): a worker with TASK_TYPES=i2v behind 200k queued ``comfy`` tasks (the table
  analyzed before the i2v tasks arrive, as a fleet's backlog is). Latency of the claim(n=1) statement (each
  followed by complete; the commit, the same for every shape, left out; round trip and, from EXPLAIN ANALYZE,
  time in the server), narrowed and plain, through today's
  claim_tasks and through the claim before 007 (006's function, installed beside it under another name from
  the shipped 006 file) on the same data, interleaved; the same for work_ready(), Supabase's poll (002's),
  also when nothing of the worker's types is queued ("idle").
  SQLite: the claim's candidate lookup, today's vs the query before 007.

Prints tables; targets: >= 2,000 cycles/s at 8 claimers; LISTEN pickup p50 <= 10 ms, p99 <= 50 ms; narrowed
claim p99 <= 5 ms, plain claims no slower than before.

    .venv/bin/python bench/bench_queue.py --phases narrowed      # only the narrowed-claim phase (~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid

import asyncpg
from _common import admin, drop_database, fresh_database, pct

from comfy_worker.models import WorkerInfo
from comfy_worker.store import _sqlite_ops
from comfy_worker.store.migrations import sql_dir
from comfy_worker.store.postgres import PostgresStore
from comfy_worker.store.sqlite import SqliteStore


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


def _function_from(file: str, name: str, new_name: str) -> str:
    """The ``create or replace function <name>(`` statement of a shipped migration, renamed: the shape a
    later migration replaced, to time beside today's on the same data."""
    text = (sql_dir() / file).read_text()
    start = text.index(f"create or replace function {name}(")
    end = text.index("$$;", text.index("$$", start) + 2) + 3  # the end of its body
    return text[start:end].replace(f"function {name}(", f"function {new_name}(", 1)


EXPLAIN = "explain (analyze, timing off, summary on, format json) "

# sql/sqlite/queries.sql's claimable_task_ids before 007: one walk of the claim order, filtered on :types
SQLITE_CLAIMABLE_BEFORE_007 = """
select t.task_id from tasks t
where t.status = 'queued' and t.run_at <= :now
  and (:types is null or t.task_type in (select value from json_each(:types)))
  and (t.depends_on = '[]' or not exists (
        select 1 from json_each(t.depends_on) d left join tasks dt on dt.task_id = d.value
        where dt.status is not 'complete'))
order by t.priority desc, t.run_at, t.created_at, t.rowid
limit :n"""


async def narrowed_claims(dsn: str, backlog: int, claims: int) -> None:
    """Claim latency narrowed to i2v behind ``backlog`` queued comfy tasks, and plain, today's claim vs 006's."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("truncate tasks")
        await conn.execute("insert into tasks (task_type, params) select 'comfy', jsonb_build_object('i', g) "
                           "from generate_series(1, $1) g", backlog)
        await conn.execute("analyze tasks")  # the backlog as the statistics know it; then i2v tasks arrive
        await conn.execute("insert into tasks (task_type, params) select 'i2v', jsonb_build_object('i', g) "
                           "from generate_series(1, $1) g", 2 * claims)
        await conn.execute(_function_from("006_claim_affinity.sql", "claim_tasks", "bench_claim_tasks_006"))
        await conn.execute(_function_from("002_functions.sql", "work_ready", "bench_work_ready_002"))
        await conn.execute("select register_worker('narrowed', 'bench', 0, 'bench')")
        calls = {
            "claim": "select task_id, lease_token, task_type from claim_tasks('narrowed', $1, 1, 60)",
            "claim 006": "select task_id, lease_token, task_type from bench_claim_tasks_006('narrowed', $1, 1, 60)",
            "work_ready": "select work_ready($1)",
            "work_ready 002": "select bench_work_ready_002($1)",
        }
        times: dict[tuple[str, str], list[float]] = {}
        server: dict[tuple[str, str], list[float]] = {}
        # idle: a polling worker whose types have nothing queued (s2v), the poll it repeats most
        every = ("claim", "claim 006", "work_ready", "work_ready 002")
        for label, types, shapes in (("narrowed", ["i2v"], every), ("plain", None, every),
                                     ("idle", ["s2v"], ("work_ready", "work_ready 002"))):
            for _ in range(3):  # warm: past PL/pgSQL's first plans, into the cached generic ones
                for shape in shapes:
                    await conn.execute("begin")
                    await conn.fetch(calls[shape], types)
                    await conn.execute("rollback")
            for _ in range(claims):
                for shape in shapes:  # interleaved: the same load for each
                    # the statement alone: its commit (one WAL flush, the same for every shape) is left out;
                    # EXPLAIN ANALYZE (no per-node timing) runs it and tells its time inside the server
                    await conn.execute("begin")
                    t0 = time.perf_counter()
                    plan = await conn.fetchval(EXPLAIN + calls[shape], types)
                    times.setdefault((label, shape), []).append(time.perf_counter() - t0)
                    server.setdefault((label, shape), []).append(json.loads(plan)[0]["Execution Time"] / 1e3)
                    if shape.startswith("claim"):
                        [row] = await conn.fetch("select task_id, lease_token, task_type from tasks "
                                                 "where worker_id = 'narrowed' and status = 'running'")
                        assert types is None or row["task_type"] == "i2v", row
                        await conn.fetchval("select complete_task($1, $2, '{}', null)", row["task_id"],
                                            row["lease_token"])
                    await conn.execute("commit")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"postgres: {backlog} comfy tasks queued; narrowed = TASK_TYPES=i2v; n={claims} calls each; a commit"
              f" adds one fdatasync ({fsync_ms():.2f} ms here now); load average {load}")
        print(f"{'':>30} {'round trip, ms':^26} {'in the server, ms':^26}")
        print(f"{'statement':>30} {'p50':>8} {'p99':>8} {'max':>8} {'p50':>8} {'p99':>8} {'max':>8}")
        for key, xs in times.items():
            label, shape = key
            before = shape.endswith(("006", "002"))
            name = f"{label} {shape.split()[0]}{' before 007' if before else ''}"
            ys = server[key]
            print(f"{name:>30} {pct(xs, .5) * 1e3:>8.2f} {pct(xs, .99) * 1e3:>8.2f} {max(xs) * 1e3:>8.2f}"
                  f" {pct(ys, .5) * 1e3:>8.2f} {pct(ys, .99) * 1e3:>8.2f} {max(ys) * 1e3:>8.2f}")
        await conn.execute("drop function bench_claim_tasks_006, bench_work_ready_002")
    finally:
        await conn.close()


async def narrowed_sqlite(backlog: int, lookups: int) -> None:
    """SQLite: the claim's candidate lookup (n=1) narrowed to i2v behind ``backlog`` comfy tasks, and plain;
    today's per-type query + merge vs the single walk before 007. Read-only: the same data for both."""
    import sqlite3
    import tempfile
    from datetime import UTC, datetime
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.db"
        store = SqliteStore(path)
        await store.connect()
        await store.migrate()
        await store.close()
        conn = sqlite3.connect(path)
        conn.execute("with recursive g(i) as (select 1 union all select i + 1 from g where i < ?) "
                     "insert into tasks (task_type, params) select 'comfy', '{}' from g", (backlog,))
        conn.commit()
        conn.execute("analyze")
        conn.execute("insert into tasks (task_type, params) values ('i2v', '{}')")
        conn.commit()
        now_dt = datetime.now(UTC)
        now = _sqlite_ops.ts(now_dt)

        def today(types: list[str] | None) -> list[str]:
            if not types:
                return [r[0] for r in conn.execute(_sqlite_ops.q("claimable_task_ids"), {"now": now, "n": 1})]
            cands = [r[0] for t in types for r in conn.execute(_sqlite_ops.q("claimable_task_ids_of_type"),
                                                                {"now": now, "task_type": t, "n": 1})]
            return _sqlite_ops.claim_order(conn, now_dt, cands, 1, {}, None)

        def before(types: list[str] | None) -> list[str]:
            return [r[0] for r in conn.execute(SQLITE_CLAIMABLE_BEFORE_007, {
                "now": now, "types": json.dumps(types) if types else None, "n": 1})]

        print(f"sqlite: {backlog} comfy tasks queued; the claim's candidate lookup (n=1); n={lookups} calls each")
        print(f"{'lookup':>30} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, types in (("narrowed", ["i2v"]), ("plain", None)):
            assert today(types) == before(types)
            times: dict[str, list[float]] = {"today": [], "before 007": []}
            for _ in range(lookups):
                for shape, fn in (("today", today), ("before 007", before)):
                    t0 = time.perf_counter()
                    fn(types)
                    times[shape].append(time.perf_counter() - t0)
            for shape, xs in times.items():
                name = f"{label}{' before 007' if shape != 'today' else ''}"
                print(f"{name:>30} {pct(xs, .5) * 1e3:>8.2f} {pct(xs, .99) * 1e3:>8.2f} {max(xs) * 1e3:>8.2f}")
        conn.close()


async def throughput_phase(a: argparse.Namespace, db: str, dsn: str) -> None:
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


async def pickup_phase(a: argparse.Namespace, dsn: str) -> None:
    print(f"{'pickup':>22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, listen, poll in (("LISTEN (poll 2 s)", True, 2.0), ("polling every 0.5 s", False, 0.5)):
        lat = await pickup(dsn, listen=listen, poll_interval=poll, n=a.pickups if listen else a.pickups // 3)
        print(f"{label:>22} {pct(lat, .5) * 1e3:>8.1f} {pct(lat, .99) * 1e3:>8.1f} {max(lat) * 1e3:>8.1f}"
              f"   (n={len(lat)}, mean {statistics.mean(lat) * 1e3:.1f} ms)")
    print()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--tasks", type=int, default=6000)
    ap.add_argument("--pickups", type=int, default=300)
    ap.add_argument("--backlog", type=int, default=200_000, help="narrowed claims: comfy tasks queued ahead")
    ap.add_argument("--claims", type=int, default=300, help="narrowed claims: calls per shape")
    ap.add_argument("--phases", default="throughput,pickup,narrowed",
                    help="comma-separated: throughput (with pgbench), pickup, narrowed")
    a = ap.parse_args()
    phases = set(a.phases.split(","))
    db, dsn = await fresh_database(a.dsn, "bench_queue")
    try:
        if "throughput" in phases:
            await throughput_phase(a, db, dsn)
        if "pickup" in phases:
            await pickup_phase(a, dsn)
        if "narrowed" in phases:
            await narrowed_claims(dsn, a.backlog, a.claims)
            print()
            await narrowed_sqlite(a.backlog, a.claims)
    finally:
        await drop_database(a.dsn, db)


if __name__ == "__main__":
    asyncio.run(main())
