"""Shared fixtures: real PostgreSQL databases made and dropped per test.

The server is the machine's PostgreSQL (``TEST_PG_DSN``, default postgresql://postgres@127.0.0.1:5432/postgres;
scripts/test.sh starts it when it is down). One migrated template database is built per test session and
each test gets a copy (CREATE DATABASE … TEMPLATE is a file copy: much faster than migrating each time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.azurite_server import AZURITE, Azurite
from tests.s3_server import BUCKET, MotoServer

ADMIN_DSN = os.environ.get("TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even when called inside a running event loop
    (async fixtures request sync fixtures such as ``pg_dsn``): it gets a thread and a loop of its own."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def dsn_for(dbname: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{dbname}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop(dbname: str) -> None:
    await _admin(f'drop database if exists "{dbname}" with (force)')


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database with the schema migrated through the real migrate path; dropped at session end."""
    from comfy_worker.store.postgres import PostgresStore

    name = f"cwt_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def build() -> None:
        await _admin(f'create database "{name}"')
        store = PostgresStore(dsn_for(name), listen=False)
        await store.connect()
        try:
            await store.migrate()
        finally:
            await store.close()

    run_sync(build())
    yield name
    run_sync(_drop(name))


@pytest.fixture
def pg_dsn(pg_template: str) -> Iterator[str]:
    """DSN of a fresh, migrated database for this test only."""
    name = f"cwt_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(f'create database "{name}" template "{pg_template}"'))
    yield dsn_for(name)
    run_sync(_drop(name))


@pytest.fixture
def empty_pg_dsn() -> Iterator[str]:
    """DSN of a fresh database with nothing in it (for migration tests)."""
    name = f"cwt_empty_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(f'create database "{name}"'))
    yield dsn_for(name)
    run_sync(_drop(name))


@pytest.fixture
async def pg_conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database, for assertions on rows."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real S3 server (moto in server mode) on 127.0.0.1 for the module, with the bucket ``renders``."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite (the Azure Blob Storage emulator) on 127.0.0.1 for the module, with the container ``renders``;
    the test is skipped where npm could not install it."""
    if not AZURITE.exists():
        pytest.skip("Azurite not installed (scripts/install.sh needs npm)")
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()
