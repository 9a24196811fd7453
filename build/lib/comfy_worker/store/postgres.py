"""PostgreSQL store (asyncpg): a thin caller of the SQL functions in sql/, plus LISTEN for wake-ups.

The pool serves calls; one extra connection LISTENs on ``comfy_worker_tasks``. If that connection drops,
:meth:`wait_for_work` falls back to polling while a background task reconnects with backoff, so claiming
never stops. With ``presence=True`` (the daemon's store) each registered worker also holds its presence lock
on a connection of its own (:mod:`._pg_presence`), and claims wait until it is held; every connection asks
for TCP keepalives on both ends. Pooled connections that died are replaced by the pool; a call that hit a dead
connection is retried on the next one, up to pool size + 1 times (the server rolled back whatever a killed
connection had in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import asyncpg

from comfy_worker.errors import (
    InvalidArgument,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
    is_transient_sqlstate,
    store_error_for,
)
from comfy_worker.logs import get_logger
from comfy_worker.models import (
    ClaimPreference,
    HeartbeatReply,
    NewTask,
    StaleReport,
    Task,
    WebhookEvent,
    WorkerInfo,
)
from comfy_worker.store._pg_presence import CONNECTION_ERRORS, Presence, prepare_connection, set_client_keepalive
from comfy_worker.store.base import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    WEBHOOK_BACKOFF_BASE_S,
    WEBHOOK_BACKOFF_CAP_S,
    WEBHOOK_RETRY_FOR_S,
)
from comfy_worker.store.migrations import postgres_migrations

CHANNEL = "comfy_worker_tasks"
_MIGRATE_LOCK = 0x636F6D6679  # pg_advisory_lock key: "comfy"

log = get_logger(__name__)


def _jsonb_default(value: Any) -> Any:
    return str(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await prepare_connection(conn)
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ, encoder=lambda v: json.dumps(v, default=_jsonb_default), decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook: skip asyncpg's default reset query (UNLISTEN *; RESET ALL; …), an extra round trip
    on every call. Pooled connections never change session state: LISTEN has its own connection, and
    migrate() resets what it sets and releases its advisory lock."""


def _map_error(exc: BaseException) -> StoreError:
    if isinstance(exc, asyncpg.DataError):  # raised client-side: a value asyncpg cannot encode (bad uuid, …)
        return InvalidArgument(f"invalid argument: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if is_transient_sqlstate(state):
            what = "transaction rolled back, retry" if state.startswith("40") else "database connection failed"
            return StoreUnavailable(f"{what}: {exc}", details={"sqlstate": state})
        message = getattr(exc, "message", None) or str(exc)
        hint = getattr(exc, "hint", None)
        return store_error_for(state, message, hint=hint) if hint else store_error_for(state, message)
    return StoreUnavailable(f"database unreachable: {type(exc).__name__}: {exc}")


PRESENCE_WAIT_S = 5.0  # how long a claim waits for a (re)connecting presence connection before giving up


class PostgresStore:
    """asyncpg-backed :class:`~comfy_worker.store.base.TaskStore`."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 4,
        listen: bool = True,
        task_types: list[str] | None = None,
        connect_timeout: float = 10.0,
        presence: bool = False,
    ) -> None:
        self._dsn = dsn
        self._pool_min, self._pool_max = pool_min, pool_max
        self._listen_enabled = listen
        self._task_types = set(task_types or ())
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._wake = asyncio.Event()
        self._listener_task: asyncio.Task[None] | None = None
        self._listener_conn: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._closed = False
        self._presence_enabled = presence
        self._presences: dict[str, Presence] = {}

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._pool_min, max_size=self._pool_max, init=_init_connection,
                reset=_keep_session,
                timeout=self._connect_timeout, command_timeout=60,
            )
        except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
            raise _map_error(exc) from exc
        if self._listen_enabled:
            self._listener_task = asyncio.create_task(self._listen_loop(), name="pg-listen")

    async def close(self) -> None:
        self._closed = True
        for presence in list(self._presences.values()):
            await presence.stop()
        self._presences.clear()
        if self._listener_task:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener_task
        if self._listener_conn is not None and not self._listener_conn.is_closed():
            with contextlib.suppress(Exception):
                await self._listener_conn.close(timeout=2)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool = None

    async def check_schema(self) -> None:
        # to_regproc is null when claim_tasks is missing or ambiguous (an old form beside the new one)
        present = await self._call("val", "select to_regproc('claim_tasks')")
        if present is None:
            raise SchemaMissing("the queue schema is not installed in this database: run `comfy-worker migrate`")

    async def migrate(self) -> list[str]:
        """Apply sql/NNN_*.sql in order under an advisory lock; re-apply a file whose checksum changed (they
        are written to be re-runnable). Returns the versions applied."""
        applied: list[str] = []
        assert self._pool is not None, "connect() first"
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("set client_min_messages = warning")
                await conn.execute("select pg_advisory_lock($1)", _MIGRATE_LOCK)
                try:
                    await conn.execute(
                        "create table if not exists comfy_worker_migrations ("
                        " version text primary key, checksum text not null,"
                        " applied_at timestamptz not null default now())"
                    )
                    done = {r["version"]: r["checksum"] for r in await conn.fetch(
                        "select version, checksum from comfy_worker_migrations")}
                    for m in postgres_migrations():
                        # once a file is (re)applied, apply every later one too: a changed 002 re-creates
                        # functions that a later file replaced (006 replaces claim_tasks), and they must win
                        if done.get(m.version) == m.checksum and not applied:
                            continue
                        async with conn.transaction():
                            await conn.execute(m.sql)
                            await conn.execute(
                                "insert into comfy_worker_migrations (version, checksum) values ($1, $2)"
                                " on conflict (version) do update set checksum = excluded.checksum,"
                                " applied_at = now()", m.version, m.checksum)
                        applied.append(m.version)
                finally:
                    await conn.execute("select pg_advisory_unlock($1)", _MIGRATE_LOCK)
                    await conn.execute("reset client_min_messages")
        except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
            raise _map_error(exc) from exc
        return applied

    # --- plumbing -------------------------------------------------------------------------------------------

    async def _call(self, mode: str, sql: str, *args: Any) -> Any:
        if self._pool is None:
            raise StoreUnavailable("the Postgres store is not connected")
        # After a server restart every pooled connection is dead, and each fails once as the pool hands it out
        # (then it is replaced): retry on a connection fault up to one more time than the pool can hold.
        attempts = self._pool_max + 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._pool.acquire() as conn:
                    if mode == "row":
                        return await conn.fetchrow(sql, *args)
                    if mode == "rows":
                        return await conn.fetch(sql, *args)
                    return await conn.fetchval(sql, *args)
            except asyncpg.DataError as exc:
                raise _map_error(exc) from exc
            except asyncpg.PostgresError as exc:
                err = _map_error(exc)
                if isinstance(err, StoreUnavailable) and attempt < attempts:
                    log.warning(
                        "store_call_retried", sqlstate=err.details.get("sqlstate"), attempt=attempt, error=str(exc)
                    )
                    continue
                raise err from exc
            except CONNECTION_ERRORS as exc:
                if attempt < attempts:
                    continue
                raise _map_error(exc) from exc
        raise AssertionError("unreachable")

    # --- workers --------------------------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._call(
            "val", "select (register_worker($1, $2, $3, $4, $5, $6)).id",
            info.worker_id, info.host, info.pid, info.version, list(info.task_types), info.metadata,
        )
        if self._presence_enabled:
            old = self._presences.pop(info.worker_id, None)
            if old is not None:
                await old.stop()
            presence = Presence(self._dsn, info.worker_id, self._connect_timeout)
            self._presences[info.worker_id] = presence
            presence.start()

    async def deregister_worker(self, worker_id: str) -> None:
        await self._call("val", "select (deregister_worker($1)).id", worker_id)
        presence = self._presences.pop(worker_id, None)
        if presence is not None:
            await presence.stop()

    def presence(self, worker_id: str) -> Presence | None:
        """The presence keeper of a worker registered through this store (None without ``presence=True``)."""
        return self._presences.get(worker_id)

    async def set_worker_status(self, worker_id: str, status: str, metadata: dict[str, Any] | None = None) -> None:
        await self._call("val", "select (set_worker_status($1, $2, $3)).id", worker_id, status, metadata)

    # --- orchestrator (FleetStore) ----------------------------------------------------------------------------

    async def record_spawned_worker(self, worker_id: str, metadata: dict[str, Any]) -> None:
        await self._call("val", "select (record_spawned_worker($1, $2)).id", worker_id, metadata)

    async def cancel_spawn(self, worker_id: str, metadata: dict[str, Any] | None = None) -> bool:
        return bool(await self._call("val", "select cancel_spawn($1, $2)", worker_id, metadata or {}))

    async def orchestrator_fleet(self) -> dict[str, Any]:
        return dict(await self._call("val", "select orchestrator_fleet()"))

    async def heartbeat(
        self, worker_id: str, lease_seconds: float, metadata: dict[str, Any] | None = None,
        task_ids: list[str] | None = None,
    ) -> HeartbeatReply:
        raw = await self._call(
            "val", "select heartbeat($1, $2, $3, $4)", worker_id, float(lease_seconds), metadata or {}, task_ids
        )
        return HeartbeatReply.from_json(raw)

    # --- tasks ----------------------------------------------------------------------------------------------

    async def enqueue(self, task: NewTask) -> Task:
        args = [task.task_type, task.params, task.task_id, task.priority, task.max_attempts,
                list(task.depends_on), task.dedupe_key, task.run_at]
        if task.callback_url is None:  # eight arguments: also works on a schema from before 008
            row = await self._call("row", "select * from enqueue_task($1, $2, $3, $4, $5, $6, $7, $8)", *args)
        else:
            row = await self._call(
                "row", "select * from enqueue_task($1, $2, $3, $4, $5, $6, $7, $8, $9)", *args, task.callback_url
            )
        return Task.from_row(row)

    async def get_task(self, task_id: str) -> Task:
        return Task.from_row(await self._call("row", "select * from get_task($1)", task_id))

    async def claim(
        self, worker_id: str, task_types: list[str] | None, n: int, lease_seconds: float,
        preference: ClaimPreference | None = None,
    ) -> list[Task]:
        presence = self._presences.get(worker_id)
        if presence is not None and not await presence.ready(PRESENCE_WAIT_S):
            # a task claimed now could not be told from one of a dead process (requeued after the grace)
            raise StoreUnavailable(
                f"worker {worker_id} does not hold its presence lock yet (its presence connection is reconnecting); "
                "claiming resumes once it does"
            )
        args: list[Any] = [worker_id, list(task_types) if task_types else None, n, float(lease_seconds)]
        if preference is None:  # four arguments: also works on a schema from before 006
            rows = await self._call("rows", "select * from claim_tasks($1, $2, $3, $4)", *args)
        else:
            rows = await self._call("rows", "select * from claim_tasks($1, $2, $3, $4, $5)", *args,
                                    preference.as_json())
        return [Task.from_row(r) for r in rows]

    async def update_progress(
        self, task_id: str, lease_token: str, progress: dict[str, Any] | None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        await self._call(
            "val", "select update_progress($1, $2::uuid, $3, $4)", task_id, str(lease_token), progress, checkpoint
        )

    async def complete(
        self, task_id: str, lease_token: str, result: dict[str, Any], output_url: str | None = None
    ) -> Task:
        row = await self._call(
            "row", "select * from complete_task($1, $2::uuid, $3, $4)", task_id, str(lease_token), result, output_url
        )
        return Task.from_row(row)

    async def fail(
        self, task_id: str, lease_token: str, error: str, details: dict[str, Any] | None = None,
        retryable: bool = True, backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    ) -> Task:
        row = await self._call(
            "row", "select * from fail_task($1, $2::uuid, $3, $4, $5, $6, $7)",
            task_id, str(lease_token), error, details, retryable, float(backoff_base_s), float(backoff_cap_s),
        )
        return Task.from_row(row)

    async def release(self, task_id: str, lease_token: str) -> Task:
        return Task.from_row(
            await self._call("row", "select * from release_task($1, $2::uuid)", task_id, str(lease_token))
        )

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        return Task.from_row(await self._call("row", "select * from cancel_task($1, $2)", task_id, reason))

    async def requeue_stale(self, worker_timeout_s: float = 90.0) -> StaleReport:
        return StaleReport.from_json(await self._call("val", "select requeue_stale($1)", float(worker_timeout_s)))

    async def fleet_snapshot(self) -> dict[str, Any]:
        return dict(await self._call("val", "select fleet_snapshot()"))

    # --- webhooks -------------------------------------------------------------------------------------------

    async def webhook_configure(self, default_url: bool, events: list[str] | None) -> None:
        await self._call("val", "select (webhook_configure($1, $2)).id", default_url, events)

    async def claim_webhooks(
        self, worker_id: str, n: int, lease_seconds: float, default_url: bool
    ) -> list[WebhookEvent]:
        rows = await self._call(
            "rows", "select * from claim_webhook_events($1, $2, $3, $4)", worker_id, n, float(lease_seconds),
            default_url,
        )
        return [WebhookEvent.from_row(r) for r in rows]

    async def report_webhook(
        self, event_id: int, lease_token: str, outcome: str, status: int | None = None, error: str | None = None,
        backoff_base_s: float = WEBHOOK_BACKOFF_BASE_S, backoff_cap_s: float = WEBHOOK_BACKOFF_CAP_S,
        retry_for_s: float = WEBHOOK_RETRY_FOR_S,
    ) -> WebhookEvent:
        row = await self._call(
            "row", "select * from report_webhook_event($1, $2::uuid, $3, $4, $5, $6, $7, $8)",
            event_id, str(lease_token), outcome, status, error, float(backoff_base_s), float(backoff_cap_s),
            float(retry_for_s),
        )
        return WebhookEvent.from_row(row)

    async def replay_webhooks(self, task_id: str) -> int:
        return int(await self._call("val", "select replay_webhook_events($1)", task_id))

    async def webhook_deliveries(self, task_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._call(
            "rows", "select * from list_webhook_deliveries($1, $2)", task_id, limit
        )
        return [dict(r) for r in rows]

    # --- wake-ups -------------------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the LISTEN connection is up (tests and benchmarks use this as their sync point)."""
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if not self._task_types or payload in self._task_types:
            self._wake.set()

    async def work_ready(self, task_types: list[str] | None = None) -> bool:
        return bool(await self._call("val", "select work_ready($1::text[])", list(task_types) if task_types else None))

    async def wait_for_work(self, timeout: float) -> bool:
        if not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return False
        self._wake.clear()
        return True

    async def _listen_loop(self) -> None:
        backoff = 0.05
        while not self._closed:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                set_client_keepalive(conn)
                await conn.add_listener(CHANNEL, self._on_notify)
                self._listener_conn = conn
                self._listening.set()
                self._wake.set()  # anything inserted while we were not listening is claimable now
                log.debug("listen_connected", channel=CHANNEL)
                backoff = 0.05
                while not lost.is_set():
                    # asyncpg notices a server-side termination only when it reads; probe now and then
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 2.0)
                    if not lost.is_set():
                        try:
                            await conn.execute("select 1", timeout=5)
                        except (asyncpg.PostgresError, *CONNECTION_ERRORS):
                            lost.set()
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
                log.warning("listen_connection_failed", error=str(exc), retry_in_s=backoff)
            finally:
                self._listening.clear()
                self._listener_conn = None
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        conn.terminate()
            if self._closed:
                break
            log.warning("listen_connection_lost", retry_in_s=backoff)
            self._wake.set()  # poll once right away rather than wait out the interval
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
