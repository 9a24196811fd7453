"""Executed plans of the queue functions, through auto_explain (test_queue_plans, test_claim_affinity)."""

from __future__ import annotations

import re

import asyncpg


async def log_plans(conn: asyncpg.Connection, *, analyze: bool = False) -> list[str]:
    """From now on, every statement ``conn`` runs, nested ones included, logs its executed plan into the list
    returned (until :func:`executed_plans`). ``analyze``: with each node's actual rows, rows removed by its
    filter, and buffers (no per-node timing)."""
    plans: list[str] = []
    conn.add_log_listener(lambda _c, msg: plans.append(msg.message))
    await conn.execute("load 'auto_explain'")
    settings = [
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "client_min_messages = log",
    ]
    if analyze:
        settings += ["auto_explain.log_analyze = on", "auto_explain.log_buffers = on", "auto_explain.log_timing = off"]
    for setting in settings:
        await conn.execute(f"set {setting}")
    return plans


async def executed_plans(conn: asyncpg.Connection, plans: list[str]) -> list[str]:
    """Stop logging; the plans among the messages :func:`log_plans` collected."""
    await conn.execute("set client_min_messages = warning")
    return [p for p in plans if "plan:" in p]


def rows_removed_by_filter(plan: str) -> int:
    """The most rows any one node of an analyzed ``plan`` read and dropped (its filter's "Rows Removed")."""
    return max((int(n) for n in re.findall(r"Rows Removed by (?:Filter|Index Recheck): (\d+)", plan)), default=0)


def buffers(plan: str) -> int:
    """Shared buffers (hit + read) the whole analyzed ``plan`` touched: its top node's Buffers line."""
    m = re.search(r"Buffers: shared((?: \w+=\d+)+)", plan)
    return sum(int(v) for v in re.findall(r"=(\d+)", m.group(1))) if m else 0
