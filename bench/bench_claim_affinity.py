"""What the claim preference (sql/006_claim_affinity.sql) costs, and what it saves.

    .venv/bin/python bench/bench_claim_affinity.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

1. **Cost** on local PostgreSQL and the embedded SQLite store: one claimer drains a pre-filled, analyzed queue
   (50k tasks, 1 in 4 ``i2v``, the rest ``comfy``) with claim(n=1) + complete, alternately without and with a
   preference ``{"i2v": 2}``. The plain claim in the same run is the baseline; the ratio is what the preference
   costs per cycle.
2. **Saving** (a simulation of the same rule, no database): one GPU serving a mixed stream of ``comfy`` and
   ``i2v`` tasks of equal priority; every change of engine between consecutive tasks is a VRAM hand-over that
   costs SWITCH_S of GPU time. Plain FIFO against the preference at several ENGINE_SWITCH_MAX_WAIT_S bounds:
   switches, GPU hours spent switching, and task waits (p50 / p95 / max).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import admin, drop_database, fresh_database

from comfy_worker.models import ClaimPreference, WorkerInfo
from comfy_worker.store.postgres import PostgresStore
from comfy_worker.store.sqlite import SqliteStore

PREFERENCE = ClaimPreference({"i2v": 2.0}, 300.0)
RUN_S = {"comfy": 45.0, "i2v": 60.0}  # GPU seconds per task (simulation)
SWITCH_S = 30.0  # one engine hand-over: free VRAM, load the other engine's model
INTERARRIVAL_S = 80.0  # ~66% busy before switching costs


async def drain(store: Any, n: int, preference: ClaimPreference | None) -> float:
    """claim + complete cycles per second over n cycles."""
    t0 = time.perf_counter()
    for _ in range(n):
        [task] = await store.claim("bench", None, 1, 60, preference)
        await store.complete(task.task_id, task.lease_token, {})
    return n / (time.perf_counter() - t0)


async def cost(store: Any, fill: Any, tasks: int, cycles: int, rounds: int) -> tuple[float, float]:
    await fill(tasks)
    await store.register_worker(WorkerInfo("bench", "bench", 0, "bench"))
    plain, preferred = [], []
    for _ in range(rounds):  # interleaved, so drift (other load on the machine) hits both alike
        plain.append(await drain(store, cycles, None))
        preferred.append(await drain(store, cycles, PREFERENCE))
    return sorted(plain)[rounds // 2], sorted(preferred)[rounds // 2]


def simulate(max_wait: float | None, *, hours: float = 24.0, seed: int = 7) -> dict[str, float]:
    """One GPU over a simulated day; max_wait None = plain FIFO. Returns switches and wait percentiles."""
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    while t < hours * 3600:
        t += rng.expovariate(1 / INTERARRIVAL_S)
        arrivals.append((t, "i2v" if rng.random() < 0.5 else "comfy"))
    queue: list[tuple[float, str]] = []
    now, loaded, switches, i = 0.0, "", 0, 0
    waits: list[float] = []
    while i < len(arrivals) or queue:
        while i < len(arrivals) and arrivals[i][0] <= now:
            queue.append(arrivals[i])
            i += 1
        if not queue:
            now = arrivals[i][0]
            continue
        pick = queue[0]
        if max_wait is not None:  # the rule of sql/006: overdue first (oldest), else the loaded engine's oldest
            overdue = [q for q in queue if now - q[0] >= max_wait]
            same = [q for q in queue if q[1] == loaded]
            pick = overdue[0] if overdue else (same[0] if same else queue[0])
        queue.remove(pick)
        if loaded and pick[1] != loaded:
            switches += 1
            now += SWITCH_S
        loaded = pick[1]
        waits.append(now - pick[0])
        now += RUN_S[pick[1]]
    waits.sort()
    return {"switches": switches, "p50": waits[len(waits) // 2], "p95": waits[int(len(waits) * 0.95)],
            "max": waits[-1], "tasks": len(waits)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--cycles", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    db, dsn = await fresh_database(a.dsn, "bench_affinity")
    try:
        pg = PostgresStore(dsn, listen=False, pool_max=1)
        await pg.connect()

        async def pg_fill(n: int) -> None:
            await admin(dsn, "truncate tasks")
            await admin(dsn, "insert into tasks (task_type, params) select case when g % 4 = 0 then 'i2v' "
                              f"else 'comfy' end, '{{}}' from generate_series(1, {n}) g")
            await admin(dsn, "analyze tasks")

        print(f"{'store':>8} {'plain cycles/s':>15} {'preference cycles/s':>20} {'ratio':>6}")
        plain, pref = await cost(pg, pg_fill, a.tasks, a.cycles, a.rounds)
        print(f"{'postgres':>8} {plain:>15.0f} {pref:>20.0f} {pref / plain:>6.2f}")
        await pg.close()
    finally:
        await drop_database(a.dsn, db)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.db"
        lite = SqliteStore(path, poll_interval=0.05)
        await lite.connect()
        await lite.migrate()

        async def lite_fill(n: int) -> None:
            import sqlite3

            with sqlite3.connect(path) as conn:
                conn.execute(
                    "with recursive g(i) as (select 1 union all select i + 1 from g where i < ?) "
                    "insert into tasks (task_type, params) select case when i % 4 = 0 then 'i2v' else 'comfy' end, "
                    "'{}' from g", (n,))
                conn.execute("analyze")

        plain, pref = await cost(lite, lite_fill, a.tasks // 5, a.cycles, a.rounds)
        print(f"{'sqlite':>8} {plain:>15.0f} {pref:>20.0f} {pref / plain:>6.2f}   ({a.tasks // 5} tasks)")
        await lite.close()

    print()
    print(f"simulated day, one GPU: comfy {RUN_S['comfy']:.0f} s / i2v {RUN_S['i2v']:.0f} s per task, "
          f"{SWITCH_S:.0f} s per engine switch, a task every {INTERARRIVAL_S:.0f} s on average (half each)")
    print(f"{'order':>24} {'switches':>9} {'GPU h switching':>16} {'wait p50 s':>11} {'p95 s':>7} {'max s':>7}")
    for label, bound in (("plain FIFO", None), ("preference, bound 60 s", 60.0),
                         ("preference, bound 300 s", 300.0), ("preference, bound 900 s", 900.0)):
        r = simulate(bound)
        print(f"{label:>24} {r['switches']:>9.0f} {r['switches'] * SWITCH_S / 3600:>16.1f} {r['p50']:>11.0f} "
              f"{r['p95']:>7.0f} {r['max']:>7.0f}")


if __name__ == "__main__":
    asyncio.run(main())
