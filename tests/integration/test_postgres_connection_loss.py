"""The asyncpg store survives its connections being killed by the server (pg_terminate_backend)."""

from __future__ import annotations

import asyncio

import asyncpg
from structlog.testing import capture_logs

from comfy_worker.models import NewTask, WorkerInfo
from comfy_worker.store.postgres import PostgresStore
from tests.conftest import ADMIN_DSN


async def _terminate(pids: list[int]) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for pid in pids:
            assert await admin.fetchval("select pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_listen_connection_killed_claiming_continues_and_listen_returns(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.connect()
    try:
        await store.register_worker(WorkerInfo("w1", "h", 1, "v"))
        assert await store.wait_listening(10)
        old_pid = store._listener_conn.get_server_pid()  # type: ignore[union-attr]
        await _terminate([old_pid])

        # claiming keeps working while LISTEN is down
        t1 = (await store.enqueue(NewTask("comfy", {"i": 1}))).task_id
        assert [t.task_id for t in await store.claim("w1", None, 1, 30)] == [t1]

        # LISTEN comes back on a new connection …
        for _ in range(200):
            conn = store._listener_conn
            if store.listening and conn is not None and conn.get_server_pid() != old_pid:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("LISTEN did not reconnect")
        # … and wakes us for new work again, well inside the polling fallback
        await store.wait_for_work(0.01)
        waiter = asyncio.create_task(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        t2 = (await store.enqueue(NewTask("comfy", {"i": 2}))).task_id
        assert await waiter is True
        assert loop.time() - t0 < 5.0  # the LISTEN wake-up, not the 30 s timeout
        assert [t.task_id for t in await store.claim("w1", None, 1, 30)] == [t2]
    finally:
        await store.close()


async def test_pool_connections_killed_calls_recover(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, pool_min=2, pool_max=2, listen=False)
    await store.connect()
    try:
        await store.register_worker(WorkerInfo("w1", "h", 1, "v"))
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            pids = [r["pid"] for r in await admin.fetch(
                "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
                pg_dsn.rsplit("/", 1)[1])]
        finally:
            await admin.close()
        assert pids
        await _terminate(pids)
        t = (await store.enqueue(NewTask("comfy", {}))).task_id
        [task] = await store.claim("w1", None, 1, 30)
        assert task.task_id == t
        done = await store.complete(t, task.lease_token or "", {}, None)
        assert done.status == "complete"
    finally:
        await store.close()


async def test_heartbeats_racing_completions_of_the_same_worker_never_fail(pg_dsn: str) -> None:
    """A worker with two tasks in flight heartbeats while both complete, on separate connections. Heartbeat
    once locked the workers row before the tasks and completion the other way round: a deadlock failed the
    completion (and with it the task). Every round must now succeed."""
    store = PostgresStore(pg_dsn, listen=False)
    await store.connect()
    try:
        await store.register_worker(WorkerInfo("w", "host", 1, "test", ("comfy",)))
        with capture_logs() as logs:
            await _race_rounds(store, 150)
        retried = [e for e in logs if e["event"] == "store_call_retried"]
        assert not retried, retried  # no deadlock needed retrying: the lock order is the same everywhere
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval("select count(*) from tasks where status = 'complete'") == 300
        finally:
            await conn.close()
    finally:
        await store.close()


async def _race_rounds(store: PostgresStore, rounds: int) -> None:
    async def beat(ids: list[str]) -> None:
        for _ in range(3):
            await store.heartbeat("w", 30, {}, ids)

    for _ in range(rounds):
        for _ in range(2):
            await store.enqueue(NewTask("comfy", {}))
        tasks = await store.claim("w", ["comfy"], 2, 30)
        held = [t.task_id for t in tasks]
        await asyncio.gather(beat(held), *(store.complete(t.task_id, t.lease_token, {}) for t in tasks), beat(held))


def test_a_rolled_back_transaction_is_transient() -> None:
    from comfy_worker.errors import StoreUnavailable
    from comfy_worker.store.postgres import _map_error

    for exc in (asyncpg.DeadlockDetectedError("deadlock detected"), asyncpg.SerializationError("could not serialize")):
        err = _map_error(exc)
        assert isinstance(err, StoreUnavailable) and err.retryable and err.details["sqlstate"][:2] == "40"
