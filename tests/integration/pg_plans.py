"""Executed plans of the queue functions, through auto_explain (test_queue_plans, test_claim_affinity)."""

from __future__ import annotations

import asyncpg


async def log_plans(conn: asyncpg.Connection) -> list[str]:
    """From now on, every statement ``conn`` runs, nested ones included, logs its executed plan into the list
    returned (until :func:`executed_plans`)."""
    plans: list[str] = []
    conn.add_log_listener(lambda _c, msg: plans.append(msg.message))
    await conn.execute("load 'auto_explain'")
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "client_min_messages = log",
    ):
        await conn.execute(f"set {setting}")
    return plans


async def executed_plans(conn: asyncpg.Connection, plans: list[str]) -> list[str]:
    """Stop logging; the plans among the messages :func:`log_plans` collected."""
    await conn.execute("set client_min_messages = warning")
    return [p for p in plans if "plan:" in p]
