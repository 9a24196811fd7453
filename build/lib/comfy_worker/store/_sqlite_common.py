"""Shared parts of the embedded SQLite store's rules (see :mod:`._sqlite_ops`): the named queries, the
canonical timestamp text, argument checks with the SQL functions' messages, and the internal helpers of
sql/002_functions.sql (_cw_held_task, _cw_refresh_worker, _cw_end_dependents).
"""

from __future__ import annotations

import functools
import json
import math
import re
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from comfy_worker.errors import InvalidArgument, LeaseLost, TaskNotFound, WorkerNotFound
from comfy_worker.store.migrations import sqlite_file

WORKER_STATUSES = ("starting", "idle", "busy", "draining", "stopped", "lost")
REGISTER_HINT = "call register_worker first"
_INT32 = 2**31 - 1
_LEASE_HINT = "stop working on this task; nothing more is recorded for it by this worker"


# --- plumbing -------------------------------------------------------------------------------------------


@functools.cache
def queries() -> dict[str, str]:
    """The named queries of sql/sqlite/queries.sql (``-- name: x`` starts query x)."""
    out: dict[str, str] = {}
    for block in re.split(r"^-- name: ", sqlite_file("queries.sql"), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        out[name.strip()] = body.strip().rstrip(";")
    return out


def q(name: str) -> str:
    return queries()[name]


def ts(value: datetime) -> str:
    """The canonical timestamp text: ISO-8601 UTC, fixed width, microseconds (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lit(value: Any) -> str:
    """Like plpgsql's format('%L'): a quoted literal."""
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def num(value: float) -> str:
    """A double as Postgres prints it: 60, 0.5, -1."""
    return str(int(value)) if math.isfinite(value) and value.is_integer() and abs(value) < 1e15 else repr(value)


def invalid(message: str, hint: str | None = None, sqlstate: str = "CW004") -> InvalidArgument:
    details: dict[str, Any] = {"sqlstate": sqlstate}
    if hint:
        details["hint"] = hint
    return InvalidArgument(message, details=details)


def json_type(value: Any) -> str:
    """The jsonb_typeof of a Python value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


def dumps(fn: str, field: str, value: Any) -> str | None:
    """JSON text for a jsonb column (non-JSON values as strings, like the asyncpg codec); None stays NULL."""
    if value is None:
        return None
    try:
        return json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError) as exc:
        raise invalid(f"{fn}: {field} cannot be stored as JSON: {exc}", sqlstate="22P02") from exc


def check_object(fn: str, field: str, value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise invalid(
            f"{fn}: {field} must be a JSON object, got a JSON {json_type(value)}",
            hint='wrap the value in an object, e.g. {"value": ...}',
        )


def check_seconds(fn: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds <= 86400:
        shown = "null" if value is None else (num(seconds) if not math.isnan(seconds) else str(value))
        raise invalid(
            f"{fn}: lease_seconds must be between 0 and 86400 (got {shown})",
            hint="pass the lease length in seconds, e.g. 60",
        )
    return seconds


def lease_token(fn: str, value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise invalid(
            f"{fn}: lease_token must be the UUID the claim returned (got {value!r})", sqlstate="22P02"
        ) from exc


def merge(old_json: str | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """jsonb ``old || extra``: a shallow merge."""
    merged = json.loads(old_json) if old_json else {}
    merged.update(extra or {})
    return merged


def worker_row(conn: sqlite3.Connection, fn: str, worker_id: str, hint: str | None = None) -> sqlite3.Row:
    row = conn.execute(q("worker_by_id"), {"worker_id": worker_id}).fetchone()
    if row is None:
        details: dict[str, Any] = {"sqlstate": "CW003"}
        if hint:
            details["hint"] = hint
        raise WorkerNotFound(f"{fn}: no worker has id {lit(worker_id)}", details=details)
    return row


def task_row(conn: sqlite3.Connection, fn: str, task_id: str) -> sqlite3.Row:
    row = conn.execute(q("task_by_id"), {"task_id": task_id}).fetchone()
    if row is None:
        raise TaskNotFound(f"{fn}: no task has id {lit(task_id)}", details={"sqlstate": "CW002"})
    return row


def held_task(conn: sqlite3.Connection, fn: str, task_id: str, token: str) -> sqlite3.Row:
    """The task, if the caller still holds it (_cw_held_task); LeaseLost / TaskNotFound otherwise."""
    row = task_row(conn, fn, task_id)
    status, holder = row["status"], row["worker_id"]
    if status == "running" and row["lease_token"] == token:
        return row
    if status == "cancelled":
        why = "the task was cancelled"
    elif status == "running":
        why = f"its lease is now held by worker {holder or ''} (ours expired and the task was requeued)"
    elif status == "queued":
        why = "our lease expired and the task was requeued"
    else:
        why = f"the task is already {status}"
    raise LeaseLost(
        f"{fn}: report for task {task_id} rejected: {why}",
        details={
            "sqlstate": "CW001",
            "hint": _LEASE_HINT,
            "task_id": task_id,
            "status": status,
            "worker_id": holder,
        },
    )


def refresh_worker(
    conn: sqlite3.Connection, now: str, worker_id: str | None, completed: int = 0, failed: int = 0
) -> None:
    """_cw_refresh_worker: busy/idle and current task after the worker's running set changed, bumping its
    completed/failed counters in the same UPDATE."""
    if worker_id is None:
        return
    newest = conn.execute(q("newest_running_of_worker"), {"worker_id": worker_id}).fetchone()
    conn.execute(
        q("refresh_worker"),
        {
            "worker_id": worker_id,
            "task_id": newest[0] if newest else None,
            "now": now,
            "completed": completed,
            "failed": failed,
        },
    )


def end_dependents(conn: sqlite3.Connection, now: str, task_id: str) -> int:
    """_cw_end_dependents: a failed dependency fails its queued dependents, a cancelled one cancels them."""
    row = conn.execute(q("task_by_id"), {"task_id": task_id}).fetchone()
    if row is None or row["status"] not in ("failed", "cancelled"):
        return 0
    return conn.execute(q("end_dependents"), {"root": task_id, "status": row["status"], "now": now}).rowcount


def int32(fn: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -_INT32 - 1 <= value <= _INT32:
        raise invalid(f"{fn}: {field} must be a 32-bit integer (got {value!r})", sqlstate="22003")
    return value
