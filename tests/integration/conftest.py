"""The ``store`` fixture: the same conformance tests run against every TaskStore implementation.

* postgres — asyncpg against a fresh migrated database;
* sqlite   — the embedded store on a file in tmp_path;
* supabase — supabase-py's async client against tests/standins/postgrest.py, a stand-in for PostgREST's
  ``POST /rest/v1/rpc/<fn>`` that calls the same SQL functions in a fresh database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from comfy_worker.store.base import TaskStore

STORE_KINDS = ("postgres", "sqlite", "supabase")
# Shaped like a Supabase service-role JWT; the stand-in only checks that it is the one configured.
SUPABASE_TEST_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UtdGVzdCJ9."
    "c2lnbmF0dXJlLWZvci10ZXN0cy1vbmx5"
)


def _pg_exec(dsn: str) -> Callable[[str], Awaitable[None]]:
    async def run(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    return run


def _sqlite_exec(path: Path) -> Callable[[str], Awaitable[None]]:
    async def run(sql: str) -> None:
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute(sql)

    return run


async def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[TaskStore, Any]:
    """Build and connect a store of ``kind``; returns (store, extra resource to stop afterwards).

    The store gets a ``test_exec(sql)`` attribute that runs raw SQL in the same database, for tests that
    must move time (e.g. make a backed-off task due) without waiting minutes."""
    if kind == "postgres":
        from comfy_worker.store.postgres import PostgresStore

        dsn = request.getfixturevalue("pg_dsn")
        store: Any = PostgresStore(dsn)
        await store.connect()
        store.test_exec = _pg_exec(dsn)
        return store, None
    if kind == "sqlite":
        from comfy_worker.store.sqlite import SqliteStore

        store = SqliteStore(tmp_path / "queue.db", poll_interval=0.05)
        await store.connect()
        await store.migrate()
        store.test_exec = _sqlite_exec(tmp_path / "queue.db")
        return store, None
    from comfy_worker.store.supabase import SupabaseStore
    from tests.standins.postgrest import PostgrestStandin

    dsn = request.getfixturevalue("pg_dsn")
    standin = PostgrestStandin(dsn, SUPABASE_TEST_KEY)
    url = await standin.start()
    store = SupabaseStore(url, SUPABASE_TEST_KEY, poll_interval=0.05)
    await store.connect()
    store.test_exec = _pg_exec(dsn)
    return store, standin


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    s, extra = await make_store(request.param, request, tmp_path)
    try:
        yield s
    finally:
        await s.close()
        if extra is not None:
            await extra.stop()
