"""The worker_disk view (sql/005_worker_disk.sql and its SQLite mirror) reads what heartbeats report: the same
rows and states from PostgreSQL and the embedded SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from comfy_worker.models import WorkerInfo
from comfy_worker.store.postgres import PostgresStore
from comfy_worker.store.sqlite import SqliteStore, split_statements, sqlite_migrations

GB = 1024**3


def disk(free: int, floor: int, **extra: Any) -> dict[str, Any]:
    return {
        "disk": {"free_bytes": free, "floor_bytes": floor, "below_floor": free < floor, "claiming": free >= floor,
                 "reason": None if free >= floor else "disk below MIN_FREE_DISK_GB: /w: …", **extra},
        "comfy_bytes": {"input": 10, "output": 2000, "temp": 3},
        "work_bytes": 77,
    }  # fmt: skip


async def report(store: Any) -> None:
    for worker_id, meta in (
        ("w-ok", disk(50 * GB, 2 * GB)),
        ("w-near", disk(2 * GB + GB // 2, 2 * GB)),
        ("w-below", disk(GB, 2 * GB)),
        ("w-silent", {}),  # an older worker that reports no disk: not listed
        ("w-stopped", disk(GB, 2 * GB)),
    ):
        await store.register_worker(WorkerInfo(worker_id, "host", 1, "0", ("comfy",), {}))
        await store.heartbeat(worker_id, 30, meta, [])
    await store.deregister_worker("w-stopped")


def check(rows: list[dict[str, Any]]) -> None:
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["w-below", "w-near", "w-ok"]
    assert {k: r["disk_state"] for k, r in by_id.items()} == {"w-below": "below", "w-near": "near", "w-ok": "ok"}
    below = by_id["w-below"]
    assert not below["claiming"] and below["reason"].startswith("disk below")
    assert below["free_gb"] == 1.0 and below["floor_gb"] == 2.0 and below["free_bytes"] == GB
    assert (below["comfy_input_bytes"], below["comfy_output_bytes"], below["comfy_temp_bytes"]) == (10, 2000, 3)
    assert below["work_bytes"] == 77 and bool(by_id["w-ok"]["claiming"]) is True


async def test_postgres_worker_disk(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, listen=False)
    await store.connect()
    try:
        await report(store)
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = [dict(r) for r in await conn.fetch("select * from worker_disk")]
        columns = [a.name for a in (await conn.prepare("select * from worker_disk")).get_attributes()]
    finally:
        await conn.close()
    check(rows)
    sqlite_columns = _sqlite_columns()
    assert columns == sqlite_columns, "the SQLite mirror must have the same columns"


def _sqlite_columns() -> list[str]:
    conn = sqlite3.connect(":memory:")
    for m in sqlite_migrations():
        for statement in split_statements(m.sql):
            conn.execute(statement)
    return [d[0] for d in conn.execute("select * from worker_disk").description]


async def test_sqlite_worker_disk(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    await store.connect()
    try:
        await store.migrate()
        await report(store)
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "q.db")
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("select * from worker_disk")]
    conn.close()
    check(rows)


async def test_view_is_service_role_only(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        grants = {
            r["grantee"]
            for r in await conn.fetch(
                "select grantee from information_schema.role_table_grants where table_name = 'worker_disk'"
            )
        }
    finally:
        await conn.close()
    assert "service_role" in grants and not grants & {"anon", "authenticated", "PUBLIC"}
