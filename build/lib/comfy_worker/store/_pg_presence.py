"""Worker presence on PostgreSQL, and the TCP keepalives that make it hold for vanished hosts.

A registered worker keeps one dedicated connection that holds a session-level advisory lock named by its id
(``presence_acquire`` in sql/002). The server releases the lock the moment that session ends, so
``requeue_stale()`` (run by every worker) can tell a dead process from a slow one: a lock it can take itself
means the process is gone, and its running tasks go back to the queue after a short grace in which a live
process whose connection merely dropped re-takes it. A slow or SIGSTOPped process keeps its socket open (its
kernel still answers), so it keeps its lock and is recovered by lease expiry, as before.

When a *host* vanishes (pod gone, no FIN) the server learns of it only from TCP: every connection of ours asks
the server for keepalive probes (``tcp_keepalives_*``: idle 10 s, then 3 probes 5 s apart) and a
``tcp_user_timeout`` for data it sent that is never acknowledged, so the session, and the lock, end about 25 s
after the host's last packet. They are set per connection with SET (not as startup parameters, which poolers
such as PgBouncer refuse); our own sockets get the same options, so a worker notices a vanished database too.

Behind a connection pooler a "session" is not the server's, and a session lock proves nothing: the store sees
that the server's backend pid differs from the one it connected to and falls back to leases, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import asyncpg

from comfy_worker.logs import get_logger

KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 25_000
# The server side of every connection (the side that must notice a vanished worker host).
SERVER_KEEPALIVE_SQL = (
    f"set tcp_keepalives_idle = {KEEPALIVE_IDLE_S}; set tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S}; "
    f"set tcp_keepalives_count = {KEEPALIVE_COUNT}; set tcp_user_timeout = {USER_TIMEOUT_MS}"
)
# The presence connection sits idle between probes: a server's idle_session_timeout must not end it.
PRESENCE_SESSION_SQL = SERVER_KEEPALIVE_SQL + "; set idle_session_timeout = 0"
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 5.0
RECONNECT_CAP_S = 1.0  # well inside the server's grace (_cw_presence_grace, 2 s) once the database answers
LOCK_NOT_AVAILABLE = "55P03"

CONNECTION_ERRORS = (
    OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncio.TimeoutError, ConnectionError,
)

log = get_logger(__name__)


def set_client_keepalive(conn: asyncpg.Connection) -> None:
    """TCP keepalive and user timeout on our end of ``conn`` (no-op for Unix sockets)."""
    transport: Any = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Keepalives on both ends of a pooled or LISTEN connection."""
    set_client_keepalive(conn)
    await conn.execute(SERVER_KEEPALIVE_SQL)


class Presence:
    """Holds one worker's presence lock on a dedicated connection; re-takes it after every reconnect."""

    def __init__(self, dsn: str, worker_id: str, connect_timeout: float) -> None:
        self._dsn, self.worker_id, self._connect_timeout = dsn, worker_id, connect_timeout
        self.held = asyncio.Event()
        self.unsupported = False  # behind a connection pooler: leases only
        self.server_pid: int | None = None
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._done = asyncio.Event()  # set once the keeper gave up for good (unsupported) or stopped

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pg-presence-{self.worker_id}")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.held.clear()

    async def ready(self, timeout: float) -> bool:
        """True once the lock is held (or presence cannot work here and leases alone apply)."""
        if self.held.is_set() or self.unsupported:
            return True
        waiters = [asyncio.ensure_future(self.held.wait()), asyncio.ensure_future(self._done.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self.held.is_set() or self.unsupported

    async def _acquire(self, conn: asyncpg.Connection) -> int:
        """presence_acquire, waiting (5 s per call, logged) while a previous session of this id holds it."""
        waited = 0
        while True:
            try:
                return int(await conn.fetchval("select presence_acquire($1)", self.worker_id, timeout=30))
            except asyncpg.PostgresError as exc:
                if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                waited += 5
                log.warning(
                    "presence_lock_waiting", waited_s=waited,
                    hint="another session of this worker id still holds it: a previous process whose connection "
                         "the server has not seen end yet (TCP keepalives end it within ~30 s), or a second "
                         "live process with the same WORKER_ID",
                )

    async def _run(self) -> None:
        backoff = 0.05
        try:
            while not self._closed:
                lost = asyncio.Event()
                conn: asyncpg.Connection | None = None
                was_held = False
                try:
                    conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                    conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                    set_client_keepalive(conn)
                    await conn.execute(PRESENCE_SESSION_SQL)
                    backend_pid = await conn.fetchval("select pg_backend_pid()")
                    if backend_pid != conn.get_server_pid():
                        self.unsupported = True
                        log.warning(
                            "presence_unsupported",
                            reason="DATABASE_URL goes through a connection pooler (the server's backend pid differs "
                                   "from the one we connected to), where a session lock proves nothing",
                            effect="dead workers are found by lease expiry only (LEASE_SECONDS)",
                            fix="connect directly to PostgreSQL (on Supabase: the direct connection, port 5432) "
                                "for recovery in seconds",
                        )
                        return
                    self.server_pid = await self._acquire(conn)
                    self._conn = conn
                    self.held.set()
                    was_held = True
                    backoff = 0.05
                    log.info("presence_acquired", backend_pid=self.server_pid)
                    while not lost.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(lost.wait(), PROBE_INTERVAL_S)
                        if not lost.is_set():
                            await conn.fetchval("select 1", timeout=PROBE_TIMEOUT_S)
                except asyncio.CancelledError:
                    raise
                except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
                    log.warning("presence_connection_failed", error=f"{type(exc).__name__}: {exc}",
                                retry_in_s=backoff)
                finally:
                    self.held.clear()
                    self._conn = None
                    if conn is not None and not conn.is_closed():
                        conn.terminate()
                if self._closed:
                    break
                if was_held:
                    log.warning("presence_lost", retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_CAP_S)
        finally:
            self._done.set()
