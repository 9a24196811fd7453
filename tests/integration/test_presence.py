"""Recovery in seconds on PostgreSQL: a worker's presence lock, held on a connection of its own.

* A worker process killed with SIGKILL has its task back in the queue within seconds (its lease is a minute).
* A worker that is only stopped (SIGSTOP) keeps its connection, so its lock: its task is recovered by lease
  expiry alone, and once continued (SIGCONT) it is told the lease is lost and never records the task.
* A presence connection killed under a live worker is re-taken within the grace: nothing is requeued. One that
  stays away past the grace loses its task, and the next heartbeat says so.
* A worker claims nothing until it holds its lock (a previous session of its id may still hold it).
* Every connection asks the server (and our socket) for TCP keepalives, so a vanished host's session ends:
  with every packet of a worker's connections dropped (iptables), its task comes back in ~27 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from comfy_worker.errors import LeaseLost, StoreUnavailable
from comfy_worker.models import NewTask, StaleReport, TaskStatus, WorkerInfo
from comfy_worker.store import postgres as pg_module
from comfy_worker.store.postgres import PostgresStore
from tests.comfy_server import free_port

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 2.0  # _cw_presence_grace() in sql/002


async def _worker_process(dsn: str, worker_id: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.queue_client", "work", "--store", "postgres", "--target", dsn,
        "--prefix", worker_id, "--presence", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def _event(proc: asyncio.subprocess.Process, timeout: float = 60) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, "the worker process exited without a word"
    return dict(json.loads(line))


async def _recover(store: PostgresStore, timeout: float) -> tuple[StaleReport, float]:
    """Run requeue_stale as a rescuing worker's stale loop does (again when a grace ends) until it recovers
    something; returns the report and the seconds it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while loop.time() - t0 < timeout:
        report = await store.requeue_stale(90)
        if report.requeued or report.failed:
            return report, loop.time() - t0
        await asyncio.sleep(min(report.recheck_in_s or 0.2, 0.2))
    raise AssertionError(f"nothing recovered within {timeout} s")


@pytest.fixture
async def store(pg_dsn: str) -> Any:
    s = PostgresStore(pg_dsn, listen=False, presence=True)
    await s.connect()
    yield s
    await s.close()


async def _holder_pid(conn: asyncpg.Connection, worker_id: str) -> int | None:
    """The backend holding a worker's presence lock (bigint advisory locks: classid = high, objid = low half)."""
    return await conn.fetchval(
        "select l.pid from pg_locks l, _cw_presence_key($1) k where l.locktype = 'advisory' and l.granted"
        " and l.objsubid = 1 and l.classid = ((k >> 32) & 4294967295)::oid and l.objid = (k & 4294967295)::oid",
        worker_id,
    )


@pytest.mark.slow
async def test_sigkilled_worker_is_recovered_in_seconds_not_at_lease_expiry(
    store: PostgresStore, pg_dsn: str, pg_conn: asyncpg.Connection
) -> None:
    victim = (await store.enqueue(NewTask("comfy", {"v": 1}))).task_id
    proc = await _worker_process(pg_dsn, "doomed", "--lease-s", "60", "--heartbeat-s", "1", "--run-s", "3600")
    claimed = await _event(proc)
    assert claimed["event"] == "claimed" and claimed["task_id"] == victim
    assert await _holder_pid(pg_conn, "doomed") is not None, "the worker holds its presence lock"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    report, took = await _recover(store, timeout=30)
    assert report.requeued == (victim,) and report.gone_workers == ("doomed",)
    assert GRACE_S - 0.5 <= took < 10, f"recovered after {took:.1f} s (grace {GRACE_S} s, lease 60 s)"
    task = await store.get_task(victim)
    assert task.status is TaskStatus.QUEUED and task.attempts == 1
    assert task.error_details == {"reason": "worker_gone", "worker_id": "doomed", "attempt": 1}
    await store.register_worker(WorkerInfo("rescuer", "test", 0, "test"))
    [again] = await store.claim("rescuer", None, 1, 30)
    assert again.task_id == victim and again.attempts == 2
    with pytest.raises(LeaseLost):
        await store.complete(victim, claimed["lease_token"], {"by": "doomed"}, None)
    await store.complete(victim, again.lease_token or "", {"by": "rescuer"}, None)
    final = await store.get_task(victim)
    assert final.status is TaskStatus.COMPLETE and final.result == {"by": "rescuer"} and final.attempts == 2


@pytest.mark.slow
async def test_sigstopped_worker_keeps_its_lock_and_is_told_its_lease_is_lost(
    store: PostgresStore, pg_dsn: str, pg_conn: asyncpg.Connection
) -> None:
    ids = [(await store.enqueue(NewTask("comfy", {"i": i}))).task_id for i in range(3)]
    proc = await _worker_process(pg_dsn, "sleepy", "--lease-s", "3", "--heartbeat-s", "0.3", "--run-s", "6")
    claimed = await _event(proc)
    held = claimed["task_id"]
    await store.register_worker(WorkerInfo("rescuer", "test", 0, "test"))
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        report, took = await _recover(store, timeout=30)
        # the stopped process's kernel keeps its socket, so its lock: only the lease (3 s) gives the task up
        assert report.requeued == (held,) and report.presence_pending == ()
        assert await _holder_pid(pg_conn, "sleepy") is not None
        task = await store.get_task(held)
        assert task.error_details is not None and task.error_details["reason"] == "lease_expired"
        assert took >= 1.5, f"requeued {took:.1f} s after the stop, before the lease could have run out"
        done: list[str] = []
        while len(done) < 3:  # the rescuer runs everything, the stopped worker's task included
            for t in await store.claim("rescuer", None, 1, 30):
                await store.complete(t.task_id, t.lease_token or "", {"by": "rescuer"}, None)
                done.append(t.task_id)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    told = await _event(proc, timeout=30)
    assert told["task_id"] == held and told["event"] in ("lost", "rejected"), told
    await asyncio.wait_for(proc.wait(), 30)
    assert sorted(done) == sorted(ids)
    for tid in ids:  # every task: complete once, by the rescuer; only the stopped one took a second attempt
        t = await store.get_task(tid)
        assert t.status is TaskStatus.COMPLETE and t.result == {"by": "rescuer"}, (tid, t.status, t.result)
        assert t.attempts == (2 if tid == held else 1)


async def test_killed_presence_connection_is_retaken_within_the_grace_and_keeps_its_task(
    store: PostgresStore, pg_conn: asyncpg.Connection, pg_dsn: str
) -> None:
    tid = (await store.enqueue(NewTask("comfy", {}))).task_id
    await store.register_worker(WorkerInfo("w1", "test", 0, "test"))
    [task] = await store.claim("w1", None, 1, 60)
    presence = store.presence("w1")
    assert presence is not None and presence.held.is_set()
    first = presence.server_pid
    assert await _holder_pid(pg_conn, "w1") == first
    checker = PostgresStore(pg_dsn, listen=False)  # another worker's stale loop
    await checker.connect()
    try:
        assert await pg_conn.fetchval("select pg_terminate_backend($1)", first)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < GRACE_S * 2:  # well past the grace: the reconnect came first
            report = await checker.requeue_stale(90)
            assert report.requeued == (), "a live worker's task was requeued after a connection blip"
            await asyncio.sleep(0.1)
    finally:
        await checker.close()
    assert presence.held.is_set() and presence.server_pid not in (None, first)
    assert await _holder_pid(pg_conn, "w1") == presence.server_pid, "the new session holds the lock"
    assert await pg_conn.fetchval("select presence_lost_at from workers where id = 'w1'") is None
    await store.complete(tid, task.lease_token or "", {}, None)
    assert (await store.get_task(tid)).status is TaskStatus.COMPLETE


async def test_presence_away_past_the_grace_loses_the_task_and_the_heartbeat_says_so(
    store: PostgresStore, pg_conn: asyncpg.Connection
) -> None:
    tid = (await store.enqueue(NewTask("comfy", {}))).task_id
    await store.register_worker(WorkerInfo("w1", "test", 0, "test"))
    [task] = await store.claim("w1", None, 1, 60)
    presence = store.presence("w1")
    assert presence is not None
    await presence.stop()  # its connection is gone and does not come back in time
    first = await store.requeue_stale(90)
    assert first.requeued == () and first.presence_pending == ("w1",)
    assert first.recheck_in_s is not None and 0 < first.recheck_in_s <= GRACE_S
    await asyncio.sleep(first.recheck_in_s + 0.1)
    second = await store.requeue_stale(90)
    assert second.requeued == (tid,) and second.gone_workers == ("w1",) and second.lost_workers == ()
    reply = await store.heartbeat("w1", 60, {}, [tid])
    assert reply.lost == (tid,)
    with pytest.raises(LeaseLost):
        await store.complete(tid, task.lease_token or "", {}, None)


async def test_a_free_lock_seen_long_ago_is_seen_again_before_anything_is_requeued(
    store: PostgresStore, pg_conn: asyncpg.Connection
) -> None:
    """A sighting too old to vouch for the time since (or from before a server restart, which the SQL also
    checks) starts a new grace: the workers reconnecting after an outage must get theirs."""
    tid = (await store.enqueue(NewTask("comfy", {}))).task_id
    await store.register_worker(WorkerInfo("w1", "test", 0, "test"))
    await store.claim("w1", None, 1, 60)
    presence = store.presence("w1")
    assert presence is not None
    await presence.stop()
    await pg_conn.execute("update workers set presence_lost_at = now() - interval '5 minutes' where id = 'w1'")
    report = await store.requeue_stale(90)
    assert report.requeued == () and report.presence_pending == ("w1",)
    assert report.recheck_in_s is not None and report.recheck_in_s > GRACE_S - 0.5
    assert (await store.get_task(tid)).status is TaskStatus.RUNNING


async def test_claims_wait_until_the_worker_holds_its_lock(
    store: PostgresStore, pg_conn: asyncpg.Connection, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_module, "PRESENCE_WAIT_S", 0.3)
    tid = (await store.enqueue(NewTask("comfy", {}))).task_id
    # a previous session of this id that the server has not seen end yet (a vanished host's connection)
    zombie = await asyncpg.connect(pg_dsn)
    try:
        await zombie.execute("select pg_advisory_lock(_cw_presence_key('w1'))")
        await store.register_worker(WorkerInfo("w1", "test", 0, "test"))
        with pytest.raises(StoreUnavailable, match="presence lock"):
            await store.claim("w1", None, 1, 60)
        assert (await store.get_task(tid)).status is TaskStatus.QUEUED
    finally:
        await zombie.close()  # the server ends that session: the lock passes to the waiting worker
    [task] = await store.claim("w1", None, 1, 60)
    presence = store.presence("w1")
    assert task.task_id == tid and presence is not None
    assert await _holder_pid(pg_conn, "w1") == presence.server_pid


async def test_every_connection_asks_for_tcp_keepalives(store: PostgresStore) -> None:
    await store.register_worker(WorkerInfo("w1", "test", 0, "test"))
    presence = store.presence("w1")
    assert presence is not None and await presence.ready(10)
    assert store._pool is not None
    async with store._pool.acquire() as pooled:
        conns = [("pool", pooled), ("presence", presence._conn)]
        for name, conn in conns:
            assert conn is not None
            shown = {k: await conn.fetchval(f"show {k}") for k in (
                "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")}
            assert shown == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                             "tcp_keepalives_count": "3", "tcp_user_timeout": "25000"}, name
            sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, name
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10, name
        assert await presence._conn.fetchval("show idle_session_timeout") == "0"  # type: ignore[union-attr]


def _iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)


def _can_drop_packets() -> bool:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        return False
    return subprocess.run(["iptables", "-w", "-S", "OUTPUT"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_drop_packets(), reason="dropping a connection's packets needs root and iptables")
async def test_a_vanished_host_s_session_ends_by_keepalive_and_its_task_is_recovered(
    pg_dsn: str, pg_conn: asyncpg.Connection
) -> None:
    """The worker's connections go through a port of their own (redirected to PostgreSQL's), and then every
    packet of them is dropped: the server hears nothing more, no FIN, as when a pod vanishes. Its keepalive
    probes go unanswered, it ends the session ~25 s after the last packet, and the task comes back, though
    the lease is five minutes."""
    host, port = pg_dsn.split("@", 1)[1].split("/", 1)[0].split(":")
    via = free_port()
    redirect = ("OUTPUT", "-o", "lo", "-p", "tcp", "-d", host, "--dport", str(via), "-j", "REDIRECT",
                "--to-ports", port)
    drop = ("OUTPUT", "-o", "lo", "-p", "tcp", "-m", "conntrack", "--ctorigdstport", str(via), "-j", "DROP")
    _iptables("-t", "nat", "-A", *redirect)
    worker = PostgresStore(pg_dsn.replace(f":{port}/", f":{via}/"), listen=False, presence=True,
                           connect_timeout=2)
    checker = PostgresStore(pg_dsn, listen=False)
    dropped = False
    try:
        await worker.connect()
        await checker.connect()
        tid = (await checker.enqueue(NewTask("comfy", {}))).task_id
        await worker.register_worker(WorkerInfo("far", "test", 0, "test"))
        [task] = await worker.claim("far", None, 1, 300)
        assert task.task_id == tid and await _holder_pid(pg_conn, "far") is not None
        _iptables("-I", *drop)
        dropped = True
        report, took = await _recover(checker, timeout=60)
        assert report.requeued == (tid,) and report.gone_workers == ("far",)
        assert 15 < took < 45, f"recovered {took:.1f} s after the host vanished (keepalive ends it at ~25 s)"
        assert (await checker.get_task(tid)).error_details == {"reason": "worker_gone", "worker_id": "far",
                                                                 "attempt": 1}
    finally:
        if dropped:
            _iptables("-D", *drop)
        _iptables("-t", "nat", "-D", *redirect)
        await checker.close()
        await worker.close()
