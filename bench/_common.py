"""What several benchmarks repeat: a throw-away PostgreSQL database per run, and percentiles.

The benchmarks run as scripts (``python bench/bench_x.py``), so this directory is on ``sys.path``:
``from _common import fresh_database, drop_database, pct``.
"""

from __future__ import annotations

import uuid

import asyncpg

from comfy_worker.store.postgres import PostgresStore


async def admin(dsn: str, sql: str) -> None:
    """Run one statement on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def database_dsn(admin_dsn: str, name: str) -> str:
    """The DSN of database ``name`` on ``admin_dsn``'s server."""
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def fresh_database(admin_dsn: str, prefix: str) -> tuple[str, str]:
    """Create ``<prefix>_<random>`` on ``admin_dsn``'s server and apply our migrations; returns (name, DSN).
    Drop it with :func:`drop_database`."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await admin(admin_dsn, f'create database "{name}"')
    dsn = database_dsn(admin_dsn, name)
    try:
        store = PostgresStore(dsn, listen=False)
        await store.connect()
        try:
            await store.migrate()
        finally:
            await store.close()
    except BaseException:
        await drop_database(admin_dsn, name)
        raise
    return name, dsn


async def drop_database(admin_dsn: str, name: str) -> None:
    await admin(admin_dsn, f'drop database if exists "{name}" with (force)')


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]
