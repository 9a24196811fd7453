"""The hot-path queue functions stay index lookups on a large, analyzed table, whatever plan mode they use.

A generic plan once joined the claimed rows back to `tasks` by hash-joining a sequential scan of the whole
table (75 ms per claim at 100k tasks), and then, its estimated cost inflated by an unknown LIMIT, was
JIT-compiled on every call (30 ms). This captures every nested statement's executed plan through auto_explain
on an analyzed 200k-task table and asserts that none of the hot functions scans `tasks` sequentially or
is JIT-compiled. requeue_stale() counts as hot: every worker runs it every STALE_CHECK_INTERVAL (its dependency
backstop hash-joined two sequential scans, 40 ms a call at 200k tasks)."""

from __future__ import annotations

import asyncpg

from tests.integration.pg_plans import executed_plans, log_plans


async def test_hot_path_never_scans_the_tasks_table(pg_conn: asyncpg.Connection) -> None:
    await pg_conn.execute(
        "insert into tasks (task_type, params) select 'comfy', jsonb_build_object('i', g) "
        "from generate_series(1, 200000) g"
    )
    await pg_conn.execute("analyze tasks")
    await pg_conn.execute("select register_worker('w1'), register_worker('w2')")
    plans = await log_plans(pg_conn)
    for _ in range(8):  # past PL/pgSQL's first custom plans, into the cached ones
        a = await pg_conn.fetchrow("select task_id, lease_token from claim_tasks('w1', null, 1, 60)")
        b = await pg_conn.fetchrow("select task_id, lease_token from claim_tasks('w2', array['comfy'], 2, 60)")
        await pg_conn.execute("select heartbeat('w1', 60, '{}', array[$1::text])", a["task_id"])
        await pg_conn.execute("select update_progress($1, $2, '{\"p\": 1}')", a["task_id"], a["lease_token"])
        await pg_conn.execute("select complete_task($1, $2, '{}', null)", a["task_id"], a["lease_token"])
        await pg_conn.execute("select fail_task($1, $2, 'x', null, true, 0, 0)", b["task_id"], b["lease_token"])
        await pg_conn.execute("select requeue_stale(90)")  # every worker, every STALE_CHECK_INTERVAL
    executed = await executed_plans(pg_conn, plans)
    assert len(executed) > 40, "auto_explain captured no plans"
    seq = [p for p in executed if "Seq Scan on tasks" in p]
    assert seq == [], seq[0][:3000]
    # A plan whose estimated cost passes jit_above_cost is JIT-compiled on every call: ~30 ms for a claim
    # that runs in 0.5 ms. The queue functions turn JIT off.
    jitted = [p for p in executed if "JIT:" in p]
    assert jitted == [], jitted[0][:3000]
