"""Embedded SQLite store: the queue in one file (``comfy_worker.db``), for a single host and no cloud account.

The same tables, statuses and views as the Postgres schema (``sql/sqlite/*.sql``), and the rules of
``sql/002_functions.sql`` mirrored in :mod:`._sqlite_ops`. Safe across processes on one host: the file is
in WAL mode (readers never block the writer), every call that writes is one short ``BEGIN IMMEDIATE``
transaction (it takes the write lock before reading, so two processes can never claim the same task), and a
busy writer is waited for up to ``busy_timeout_s`` before :class:`StoreUnavailable` says the file is locked.

Each store owns one connection, used only from its own single worker thread: calls from any number of
coroutines queue up there, so they are serialised and the event loop never blocks on the disk. There is no
LISTEN: :meth:`wait_for_work` polls every ``poll_interval`` seconds (with jitter), and wakes at once when
this same store enqueues or requeues work.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from comfy_worker.errors import InvalidArgument, SchemaMissing, StoreError, StoreUnavailable
from comfy_worker.logs import get_logger
from comfy_worker.models import (
    ClaimPreference,
    HeartbeatReply,
    NewTask,
    StaleReport,
    Task,
    TaskStatus,
    WebhookEvent,
    WorkerInfo,
)
from comfy_worker.store import _sqlite_common as common
from comfy_worker.store import _sqlite_ops as ops
from comfy_worker.store import _sqlite_webhooks as hooks
from comfy_worker.store.base import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    WEBHOOK_BACKOFF_BASE_S,
    WEBHOOK_BACKOFF_CAP_S,
    WEBHOOK_RETRY_FOR_S,
)
from comfy_worker.store.migrations import Migration, sql_dir, sqlite_file

log = get_logger(__name__)
T = TypeVar("T")

# primary result codes (https://sqlite.org/rescode.html)
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
# PERM READONLY IOERR CORRUPT FULL CANTOPEN NOLFS AUTH NOTADB
_FILE_CODES = {3, 8, 10, 11, 13, 14, 22, 23, 26}
_VALUE_CODES = {18, 19, 20, 25}  # TOOBIG CONSTRAINT MISMATCH RANGE
_SQLITE_ERROR = 1
_JSON_COLUMNS = ("task_types", "metadata", "error_details")


def sqlite_migrations() -> list[Migration]:
    """Every ``sql/sqlite/NNN_name.sql`` in order."""
    names = sorted(p.name for p in (sql_dir() / "sqlite").glob("[0-9][0-9][0-9]_*.sql"))
    return [Migration(name.removesuffix(".sql"), sqlite_file(name)) for name in names]


def split_statements(script: str) -> Iterator[str]:
    """One statement at a time (triggers' BEGIN … END bodies stay whole), so a migration runs in our
    transaction: ``executescript`` would commit first."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if any(ln.strip() and not ln.strip().startswith("--") for ln in buf.splitlines()):
        yield buf.strip()  # an unterminated last statement: let SQLite say what is wrong with it


def _snapshot_row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    if "alive" in out and out["alive"] is not None:
        out["alive"] = bool(out["alive"])
    return out


def _apply_statement(conn: sqlite3.Connection, statement: str) -> None:
    """One migration statement. SQLite has no ADD COLUMN IF NOT EXISTS: a re-run's ADD COLUMN of a column
    that is there is skipped, so the files stay re-runnable."""
    try:
        conn.execute(statement)
    except sqlite3.OperationalError as exc:
        code = "\n".join(ln for ln in statement.splitlines() if not ln.lstrip().startswith("--")).strip()
        if not (code.lower().startswith("alter table") and "duplicate column name" in str(exc)):
            raise


def _exec_script(conn: sqlite3.Connection, _now: str, sql: str) -> None:
    for statement in split_statements(sql):
        conn.execute(statement)


class SqliteStore:
    """SQLite-backed :class:`~comfy_worker.store.base.TaskStore`."""

    name = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float = 30.0,
        poll_interval: float = 1.0,
        task_types: list[str] | None = None,
    ) -> None:
        self._path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._poll_interval = poll_interval
        self._task_types = list(task_types) if task_types else None
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wake = asyncio.Event()

    @property
    def path(self) -> Path:
        return self._path

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        journal = await self._run(self._open)
        if journal.lower() != "wal":  # e.g. a file system without shared memory: one process at a time
            log.warning("sqlite_not_in_wal_mode", path=str(self._path), journal_mode=journal)

    def _open(self) -> str:
        conn = sqlite3.connect(
            str(self._path),
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
        try:
            conn.row_factory = sqlite3.Row
            journal = str(conn.execute("pragma journal_mode = wal").fetchone()[0])
            conn.execute("pragma synchronous = normal")  # WAL + normal: durable at checkpoints, never corrupt
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return journal

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def check_schema(self) -> None:
        if not await self._run(self._schema_present):
            raise SchemaMissing(f"the queue schema is not installed in {self._path}: run `comfy-worker migrate`")

    async def migrate(self) -> list[str]:
        """Apply sql/sqlite/NNN_*.sql in order in one IMMEDIATE transaction (so concurrent migrations queue);
        re-apply a file whose checksum changed, and every later one (they are written to be re-runnable)."""
        return await self._run(self._migrate)

    def _migrate(self) -> list[str]:
        conn = self._require()
        migrations = sqlite_migrations()
        if not migrations:  # a broken install (or a shadowing comfy_worker directory) must not look migrated
            where = sql_dir() / "sqlite"
            raise SchemaMissing(f"no SQLite migrations found under {where}: reinstall comfy-worker")
        applied: list[str] = []
        conn.execute("begin immediate")
        try:
            conn.execute(
                "create table if not exists comfy_worker_migrations (version text primary key,"
                " checksum text not null,"
                " applied_at text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')))"
            )
            done = dict(conn.execute("select version, checksum from comfy_worker_migrations").fetchall())
            for m in migrations:
                # once a file is (re)applied, apply every later one too (as the Postgres store does): a re-run
                # 008 re-creates the triggers and view that 009 replaced, and 009's must win
                if done.get(m.version) == m.checksum and not applied:
                    continue
                for statement in split_statements(m.sql):
                    _apply_statement(conn, statement)
                conn.execute(
                    "insert into comfy_worker_migrations (version, checksum, applied_at) values (?, ?, ?)"
                    " on conflict (version) do update set checksum = excluded.checksum,"
                    " applied_at = excluded.applied_at",
                    (m.version, m.checksum, common.ts(datetime.now(UTC))),
                )
                applied.append(m.version)
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return applied

    async def test_exec(self, sql: str) -> None:
        """Run raw SQL statements in one IMMEDIATE transaction (tests and tooling, e.g. bulk inserts)."""
        await self._write(_exec_script, sql)

    # --- plumbing -------------------------------------------------------------------------------------------

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not connected: call connect() first")
        return self._conn

    def _schema_present(self) -> bool:
        conn = self._require()
        return len(conn.execute(common.q("schema_tables")).fetchall()) == 2

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread; sqlite3 errors come back as comfy_worker errors."""
        if self._executor is None:
            raise StoreUnavailable("the SQLite store is not connected: call connect() first")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guarded, fn, *args))

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise self._map_error(exc) from exc

    def _map_error(self, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        details = {"sqlite_error": name, "path": str(self._path)}
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in _BUSY_CODES:
            return StoreUnavailable(
                f"the SQLite database {self._path} is locked: another process held it for longer than "
                f"busy_timeout_s={self._busy_timeout_s:g}; retry later",
                details=details,
            )
        if primary in _FILE_CODES:
            return StoreUnavailable(
                f"cannot use the SQLite database {self._path}: {exc} (the directory must exist and be "
                "writable and the file must be a SQLite database; DATABASE_URL=sqlite:///path picks "
                "another file)",
                details=details,
            )
        if primary in _VALUE_CODES:
            return InvalidArgument(f"the queue rejected a value: {exc}", details=details)
        if primary == _SQLITE_ERROR and self._conn is not None:
            try:
                present = self._schema_present()
            except sqlite3.Error:
                present = True
            if not present or str(exc).startswith("no such table"):  # e.g. a file from before 008_webhooks
                return SchemaMissing(
                    f"the queue schema is not installed in {self._path} ({exc}): run `comfy-worker migrate`",
                    details=details,
                )
        return StoreError(f"SQLite error on {self._path}: {exc}", details=details)

    def _tx(self, op: Callable[..., T], *args: Any, as_datetime: bool = False) -> T:
        """``op(conn, now, *args)`` in one BEGIN IMMEDIATE transaction; ``now`` is read once the write lock
        is held (as Postgres' now() is fixed per transaction), as a datetime or as the canonical text."""
        conn = self._require()
        conn.execute("begin immediate")
        try:
            now = datetime.now(UTC)
            result = op(conn, now if as_datetime else common.ts(now), *args)
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise
        return result

    async def _write(self, op: Callable[..., T], *args: Any, as_datetime: bool = False) -> T:
        return await self._run(functools.partial(self._tx, op, as_datetime=as_datetime), *args)

    def _read(self, op: Callable[..., T], *args: Any) -> T:
        return op(self._require(), *args)

    # --- workers --------------------------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._write(ops.op_register_worker, info, as_datetime=True)
        self._wake.set()  # anything it held before a restart is claimable again

    async def deregister_worker(self, worker_id: str) -> None:
        await self._write(ops.op_deregister_worker, worker_id)
        self._wake.set()

    async def set_worker_status(self, worker_id: str, status: str, metadata: dict[str, Any] | None = None) -> None:
        await self._write(ops.op_set_worker_status, worker_id, status, metadata)

    async def heartbeat(
        self,
        worker_id: str,
        lease_seconds: float,
        metadata: dict[str, Any] | None = None,
        task_ids: list[str] | None = None,
    ) -> HeartbeatReply:
        ids = list(task_ids) if task_ids is not None else None
        raw = await self._write(ops.op_heartbeat, worker_id, lease_seconds, metadata, ids, as_datetime=True)
        return HeartbeatReply.from_json(raw)

    # --- tasks ----------------------------------------------------------------------------------------------

    async def enqueue(self, task: NewTask) -> Task:
        out = Task.from_row(await self._write(ops.op_enqueue, task))
        if out.status is TaskStatus.QUEUED:
            self._wake.set()
        return out

    async def get_task(self, task_id: str) -> Task:
        return Task.from_row(await self._run(self._read, ops.op_get_task, task_id))

    async def claim(
        self, worker_id: str, task_types: list[str] | None, n: int, lease_seconds: float,
        preference: ClaimPreference | None = None,
    ) -> list[Task]:
        types = list(task_types) if task_types else None
        pref = preference.as_json() if preference is not None else None
        rows = await self._write(ops.op_claim, worker_id, types, n, lease_seconds, pref, as_datetime=True)
        return [Task.from_row(r) for r in rows]

    async def update_progress(
        self,
        task_id: str,
        lease_token: str,
        progress: dict[str, Any] | None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        await self._write(ops.op_update_progress, task_id, lease_token, progress, checkpoint)

    async def complete(
        self, task_id: str, lease_token: str, result: dict[str, Any], output_url: str | None = None
    ) -> Task:
        return Task.from_row(await self._write(ops.op_complete, task_id, lease_token, result, output_url))

    async def fail(
        self,
        task_id: str,
        lease_token: str,
        error: str,
        details: dict[str, Any] | None = None,
        retryable: bool = True,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    ) -> Task:
        row = await self._write(
            ops.op_fail,
            task_id,
            lease_token,
            error,
            details,
            retryable,
            float(backoff_base_s),
            float(backoff_cap_s),
            as_datetime=True,
        )
        return Task.from_row(row)

    async def release(self, task_id: str, lease_token: str) -> Task:
        out = Task.from_row(await self._write(ops.op_release, task_id, lease_token))
        self._wake.set()
        return out

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        return Task.from_row(await self._write(ops.op_cancel, task_id, reason))

    async def requeue_stale(self, worker_timeout_s: float = 90.0) -> StaleReport:
        report = StaleReport.from_json(await self._write(ops.op_requeue_stale, worker_timeout_s, as_datetime=True))
        if report.requeued:
            self._wake.set()
        return report

    # --- monitoring -----------------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        conn = self._require()
        conn.execute("begin")  # one consistent read of all four views
        try:
            out: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
            for key in ("queue", "workers", "throughput", "failures"):
                out[key] = [_snapshot_row(r) for r in conn.execute(common.q(f"snapshot_{key}")).fetchall()]
        finally:
            conn.execute("commit")
        return out

    async def fleet_snapshot(self) -> dict[str, Any]:
        return await self._run(self._snapshot)

    # --- webhooks -------------------------------------------------------------------------------------------

    async def webhook_configure(self, default_url: bool, events: list[str] | None) -> None:
        await self._write(hooks.op_configure, default_url, list(events) if events is not None else None,
                          as_datetime=True)

    async def claim_webhooks(
        self, worker_id: str, n: int, lease_seconds: float, default_url: bool
    ) -> list[WebhookEvent]:
        rows = await self._write(hooks.op_claim, worker_id, n, lease_seconds, default_url, as_datetime=True)
        return [WebhookEvent.from_row(r) for r in rows]

    async def report_webhook(
        self, event_id: int, lease_token: str, outcome: str, status: int | None = None, error: str | None = None,
        backoff_base_s: float = WEBHOOK_BACKOFF_BASE_S, backoff_cap_s: float = WEBHOOK_BACKOFF_CAP_S,
        retry_for_s: float = WEBHOOK_RETRY_FOR_S,
    ) -> WebhookEvent:
        row = await self._write(
            hooks.op_report, event_id, lease_token, outcome, status, error, float(backoff_base_s),
            float(backoff_cap_s), float(retry_for_s), as_datetime=True,
        )
        return WebhookEvent.from_row(row)

    async def replay_webhooks(self, task_id: str) -> int:
        return int(await self._write(hooks.op_replay, task_id))

    async def webhook_deliveries(self, task_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return await self._run(self._read, hooks.op_deliveries, task_id, limit)

    # --- wake-ups -------------------------------------------------------------------------------------------

    def _claimable_now(self) -> bool:
        return self._claimable(self._task_types)

    def _claimable(self, task_types: list[str] | None) -> bool:
        return ops.has_claimable(self._require(), common.ts(datetime.now(UTC)), task_types)

    async def work_ready(self, task_types: list[str] | None = None) -> bool:
        return await self._run(self._claimable, list(task_types) if task_types else None)

    async def wait_for_work(self, timeout: float) -> bool:
        """Poll for claimable work every ``poll_interval`` (±20% jitter, so workers do not poll in step) until
        ``timeout``; True at once when this store itself enqueued or requeued something."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(float(timeout), 0.0)
        while True:
            remaining = deadline - loop.time()
            delay = min(remaining, self._poll_interval * random.uniform(0.8, 1.2))
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                else:
                    self._wake.clear()
                    return True
            if await self._run(self._claimable_now):
                return True
            if loop.time() >= deadline:
                return False
