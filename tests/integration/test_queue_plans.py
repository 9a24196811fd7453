"""The hot-path queue functions stay index lookups on a large, analyzed table, whatever plan mode they use.

A generic plan once joined the claimed rows back to `tasks` by hash-joining a sequential scan of the whole
table (75 ms per claim at 100k tasks), and then, its estimated cost inflated by an unknown LIMIT, was
JIT-compiled on every call (30 ms). This captures every nested statement's executed plan through auto_explain
on an analyzed 200k-task table and asserts that none of the hot functions scans `tasks` sequentially or
is JIT-compiled. requeue_stale() counts as hot: every worker runs it every STALE_CHECK_INTERVAL (its dependency
backstop hash-joined two sequential scans, 40 ms a call at 200k tasks)."""

from __future__ import annotations

import asyncpg

from tests.integration.pg_plans import buffers, executed_plans, log_plans, rows_removed_by_filter


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


async def test_a_claim_narrowed_to_task_types_reads_its_types_not_the_backlog(pg_conn: asyncpg.Connection) -> None:
    """Issue 20: a worker with TASK_TYPES behind 200k queued tasks of other types. The claim once walked the
    whole queue in claim order (tasks_claim_idx) and filtered on the type: an index scan, so the test above
    passed, but it read and dropped all 200k rows per claim (50-70 ms). The table is analyzed while it holds
    only `comfy` tasks (the statistics then show one type: the case where even a per-type lookup written as
    an equality went back to walking tasks_claim_idx), then `i2v` and `t2v` tasks arrive. Every executed plan
    of the claim, with or without a preference, and of work_ready() must drop no more than a handful of rows
    and touch a handful of buffers (rows and buffers from EXPLAIN ANALYZE, not timing)."""
    await pg_conn.execute(
        "insert into tasks (task_type, params) select 'comfy', jsonb_build_object('i', g) "
        "from generate_series(1, 200000) g"
    )
    await pg_conn.execute("analyze tasks")
    await pg_conn.execute(
        "insert into tasks (task_type, params, priority) select case when g % 2 = 0 then 'i2v' else 't2v' end, "
        "'{}', g % 3 from generate_series(1, 200) g"
    )
    await pg_conn.execute("select register_worker('w1')")
    plans = await log_plans(pg_conn, analyze=True)
    preference = '{"weights": {"t2v": 2}, "max_wait_s": 300}'
    for _ in range(8):  # past PL/pgSQL's first custom plans, into the cached ones
        claimed = [
            *await pg_conn.fetch("/* test */ select * from claim_tasks('w1', array['i2v'], 1, 60)"),
            *await pg_conn.fetch("/* test */ select * from claim_tasks('w1', array['i2v', 't2v', 'i2v'], 2, 60)"),
            *await pg_conn.fetch("/* test */ select * from claim_tasks('w1', array['i2v', 't2v'], 1, 60, $1)",
                                 preference),
        ]
        assert [r["task_type"] for r in claimed][:1] == ["i2v"] and len(claimed) == 4
        assert {r["priority"] for r in claimed} == {2}  # 67 of the 200 have the highest priority
        assert await pg_conn.fetchval("/* test */ select work_ready(array['t2v'])") is True
        assert await pg_conn.fetchval("/* test */ select work_ready(array['s2v'])") is False
        for r in claimed:
            await pg_conn.execute("/* test */ select complete_task($1, $2, '{}', null)", r["task_id"], r["lease_token"])
    executed = await executed_plans(pg_conn, plans)
    assert len(executed) > 40, "auto_explain captured no plans"
    assert [p for p in executed if "Seq Scan on tasks" in p] == []
    assert any("tasks_claim_type_idx" in p for p in executed)
    on_tasks = [p for p in executed if " on tasks " in p]  # not asyncpg's own catalog queries
    walked = [p for p in on_tasks if rows_removed_by_filter(p) > 20]
    assert walked == [], walked[0][:3000]
    # the function bodies' statements (the test's own calls also count catalog reads of a first call)
    heavy = [p for p in on_tasks if "/* test */" not in p and buffers(p) > 100]
    assert heavy == [], heavy[0][:3000]
