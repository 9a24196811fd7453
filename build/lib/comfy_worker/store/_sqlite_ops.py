"""The queue's rules for the embedded SQLite store: sql/002_functions.sql, rewritten as Python over SQLite.

Each ``op_*`` function is the body of one Postgres function. It runs synchronously on one
``sqlite3.Connection`` inside a ``BEGIN IMMEDIATE`` transaction that :mod:`.sqlite` opens (so no other
process writes meanwhile) and gets ``now``, read once after the write lock was taken, as Postgres'
``now()`` is fixed for a transaction. Raising rolls the whole call back, as a RAISE does in plpgsql.
Messages, statuses and JSON details are the same as the SQL functions'.
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from datetime import datetime, timedelta
from typing import Any

from comfy_worker.errors import TaskNotFound, WorkerIdInUse, WorkerNotFound
from comfy_worker.models import NewTask, WorkerInfo
from comfy_worker.store._sqlite_common import (
    REGISTER_HINT,
    WORKER_STATUSES,
    check_object,
    check_seconds,
    dumps,
    end_dependents,
    held_task,
    int32,
    invalid,
    json_type,
    lease_token,
    lit,
    merge,
    q,
    refresh_worker,
    task_row,
    ts,
    worker_row,
)

# --- workers --------------------------------------------------------------------------------------------


def op_register_worker(conn: sqlite3.Connection, now_dt: datetime, info: WorkerInfo) -> None:
    now = ts(now_dt)
    wid = info.worker_id
    if not isinstance(wid, str) or not wid:
        raise invalid("register_worker: worker_id must be a non-empty string")
    check_object("register_worker", "metadata", info.metadata)
    existing = conn.execute(q("worker_by_id"), {"worker_id": wid}).fetchone()
    if existing is not None and existing["host"] != info.host and existing["status"] in ("idle", "busy", "draining"):
        check_id_not_in_use(conn, now_dt, existing)
    args = {
        "worker_id": wid,
        "host": info.host,
        "pid": info.pid,
        "version": info.version,
        "task_types": dumps("register_worker", "task_types", list(info.task_types or ())),
        "now": now,
    }
    if existing is None:
        args["metadata"] = dumps("register_worker", "metadata", info.metadata or {})
        conn.execute(q("insert_worker"), args)
    else:
        args["metadata"] = dumps("register_worker", "metadata", merge(existing["metadata"], info.metadata))
        conn.execute(q("reregister_worker"), args)
    # A worker id re-registering means its previous process is gone: what it held goes back to the queue
    # now rather than after lease expiry (the attempt counts, as it would have on expiry).
    for (task_id,) in conn.execute(q("running_task_ids_of_worker"), {"worker_id": wid}).fetchall():
        conn.execute(q("requeue_restarted_task"), {"task_id": task_id, "worker_id": wid, "now": now})
        end_dependents(conn, now, task_id)


def check_id_not_in_use(conn: sqlite3.Connection, now_dt: datetime, row: sqlite3.Row) -> None:
    """register_worker's rule for an id registered from another host: refuse while that process is alive (a
    heartbeat in the last 30 s, or a task under a live lease)."""
    leased = conn.execute(q("live_leases_of_worker"), {"worker_id": row["id"], "now": ts(now_dt)}).fetchone()[0]
    heartbeat = row["last_heartbeat"]
    if (heartbeat is not None and heartbeat > ts(now_dt - timedelta(seconds=30))) or leased:
        ago = f"{(now_dt - datetime.fromisoformat(heartbeat)).total_seconds():.1f}" if heartbeat else "?"
        raise WorkerIdInUse(
            f"register_worker: worker id {lit(row['id'])} is in use by host {row['host'] or '?'} (pid "
            f"{row['pid'] if row['pid'] is not None else '?'}, last heartbeat {ago} s ago): give every worker its "
            "own WORKER_ID / --worker-id; if that worker is gone, start again once it has been silent for 30 s and "
            "its leases have run out",
            details={"sqlstate": "CW005"},
        )


def op_deregister_worker(conn: sqlite3.Connection, now: str, worker_id: str) -> None:
    conn.execute(q("release_worker_tasks"), {"worker_id": worker_id, "now": now})
    if conn.execute(q("stop_worker"), {"worker_id": worker_id, "now": now}).rowcount == 0:
        raise WorkerNotFound(f"deregister_worker: no worker has id {lit(worker_id)}", details={"sqlstate": "CW003"})


def op_set_worker_status(
    conn: sqlite3.Connection, now: str, worker_id: str, status: str, metadata: dict[str, Any] | None
) -> None:
    check_object("set_worker_status", "metadata", metadata)
    row = worker_row(conn, "set_worker_status", worker_id)
    if status not in WORKER_STATUSES:
        raise invalid(
            f"set_worker_status: status must be one of {', '.join(WORKER_STATUSES)} (got {lit(status)})",
            sqlstate="23514",
        )
    conn.execute(
        q("set_worker_status"),
        {
            "worker_id": worker_id,
            "status": status,
            "now": now,
            "metadata": dumps("set_worker_status", "metadata", merge(row["metadata"], metadata)),
        },
    )


def op_heartbeat(
    conn: sqlite3.Connection,
    now_dt: datetime,
    worker_id: str,
    lease_seconds: Any,
    metadata: dict[str, Any] | None,
    task_ids: list[str] | None,
) -> dict[str, Any]:
    now = ts(now_dt)
    seconds = check_seconds("heartbeat", lease_seconds)
    check_object("heartbeat", "metadata", metadata)
    row = worker_row(conn, "heartbeat", worker_id, hint=REGISTER_HINT)
    conn.execute(
        q("worker_heartbeat"),
        {
            "worker_id": worker_id,
            "now": now,
            "metadata": dumps("heartbeat", "metadata", merge(row["metadata"], metadata)),
        },
    )
    conn.execute(
        q("extend_worker_leases"),
        {
            "worker_id": worker_id,
            "now": now,
            "lease_expires_at": ts(now_dt + timedelta(seconds=seconds)),
        },
    )
    status = row["status"]
    if status in ("lost", "starting", "stopped"):
        # it was given up on (or never registered properly) but is alive: it counts again
        conn.execute(q("revive_worker"), {"worker_id": worker_id})
        refresh_worker(conn, now, worker_id)
        status = worker_row(conn, "heartbeat", worker_id)["status"]
    cancelled: list[str] = []
    lost: list[str] = []
    if task_ids is None:
        # no list given: report cancellations of tasks still attributed to this worker and not yet told
        cancelled = [r[0] for r in conn.execute(q("untold_cancelled_of_worker"), {"worker_id": worker_id})]
        if cancelled:
            conn.execute(q("mark_cancel_told"), {"worker_id": worker_id})
    else:
        ids = [str(i) for i in task_ids]
        missing: list[str] = []
        known: dict[str, sqlite3.Row] = {}
        for r in conn.execute(q("task_states"), {"ids": json.dumps(ids)}):
            if r["task_id"] is None:
                missing.append(r["asked"])
            else:
                known[r["task_id"]] = r
        for tid in sorted(known):
            r = known[tid]
            if r["status"] == "cancelled":
                cancelled.append(tid)
            elif r["status"] != "running" or r["worker_id"] != worker_id:
                lost.append(tid)
        # ids the worker holds that no longer exist at all are lost too
        lost += missing
    return {"worker_status": status, "cancelled": cancelled, "lost": lost}


# --- tasks ----------------------------------------------------------------------------------------------


def op_enqueue(conn: sqlite3.Connection, now: str, task: NewTask) -> sqlite3.Row:
    fn = "enqueue_task"
    if not isinstance(task.task_type, str) or not task.task_type:
        raise invalid(f"{fn}: task_type must be a non-empty string")
    if not isinstance(task.params, dict):
        got = "null" if task.params is None else f"a JSON {json_type(task.params)}"
        raise invalid(f"{fn}: params must be a JSON object, got {got}", hint='send params as {"workflow": {...}, ...}')
    if task.max_attempts is None or (isinstance(task.max_attempts, int) and task.max_attempts < 1):
        raise invalid(f"{fn}: max_attempts must be >= 1 (got {task.max_attempts})")
    max_attempts = int32(fn, "max_attempts", task.max_attempts)
    priority = int32(fn, "priority", 0 if task.priority is None else task.priority)
    depends_on = [str(d) for d in (task.depends_on or ())]
    if depends_on:
        missing = [r[0] for r in conn.execute(q("missing_task_ids"), {"ids": json.dumps(depends_on)})]
        if missing:
            raise TaskNotFound(
                f"{fn}: depends_on names tasks that do not exist: {', '.join(missing)}",
                details={"sqlstate": "CW002"},
            )
    if task.run_at is not None and not isinstance(task.run_at, datetime):
        raise invalid(f"{fn}: run_at must be a datetime (got {task.run_at!r})", sqlstate="22P02")
    row = conn.execute(
        q("insert_task"),
        {
            "task_id": task.task_id if task.task_id is not None else str(uuid.uuid4()),
            "task_type": task.task_type,
            "params": dumps(fn, "params", task.params),
            "priority": priority,
            "max_attempts": max_attempts,
            "depends_on": json.dumps(depends_on),
            "dedupe_key": task.dedupe_key,
            "run_at": ts(task.run_at) if task.run_at is not None else now,
            "now": now,
        },
    ).fetchone()
    if row is not None and task.callback_url is not None:  # sql/sqlite/008_webhooks.sql's column
        row = conn.execute(
            "update tasks set callback_url = ? where task_id = ? returning *", (task.callback_url, row["task_id"])
        ).fetchone()
    if row is not None:
        return row
    # idempotent: an existing task_id, or a dedupe_key held by a queued or running task, returns that task
    if task.task_id is not None:
        row = conn.execute(q("task_by_id"), {"task_id": task.task_id}).fetchone()
    if row is None:
        row = conn.execute(q("task_by_active_dedupe_key"), {"dedupe_key": task.dedupe_key}).fetchone()
    return row


def op_get_task(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    return task_row(conn, "get_task", task_id)


def op_claim(
    conn: sqlite3.Connection,
    now_dt: datetime,
    worker_id: str,
    task_types: list[str] | None,
    n: Any,
    lease_seconds: Any,
    preference: Any = None,
) -> list[sqlite3.Row]:
    now = ts(now_dt)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise invalid(f"claim_tasks: n must be between 1 and 1000 (got {n})")
    seconds = check_seconds("claim_tasks", lease_seconds)
    max_wait = preference_max_wait(preference) if preference is not None else None
    status = worker_row(conn, "claim_tasks", worker_id, hint=REGISTER_HINT)["status"]
    if status in ("draining", "stopped"):
        return []
    if task_types:
        # sql/007: the first n of each type through its part of tasks_claim_type_idx, merged into claim order
        # (the first n of the merged candidates, in plain order or with the preference)
        candidates = [
            r[0] for task_type in sorted({str(t) for t in task_types})
            for r in conn.execute(q("claimable_task_ids_of_type"), {"now": now, "task_type": task_type, "n": n})]
        weights = preference["weights"] if max_wait is not None else {}
        picked = claim_order(conn, now_dt, candidates, n, weights, max_wait)
    else:
        picked = [r[0] for r in conn.execute(q("claimable_task_ids"), {"now": now, "n": n})]
        if max_wait is not None:
            picked = preferred_order(conn, now_dt, picked, n, preference["weights"], max_wait)
    if not picked:
        return []
    expires = ts(now_dt + timedelta(seconds=seconds))
    claimed: list[sqlite3.Row] = []
    for task_id in picked:
        row = conn.execute(
            q("claim_task"),
            {
                "task_id": task_id,
                "worker_id": worker_id,
                "lease_token": str(uuid.uuid4()),
                "lease_expires_at": expires,
                "now": now,
            },
        ).fetchone()
        if row is not None:
            claimed.append(row)
    if claimed:
        conn.execute(q("worker_claimed"), {"worker_id": worker_id, "task_id": claimed[0]["task_id"], "now": now})
    return claimed


def preference_max_wait(preference: Any) -> float:
    """sql/006's _cw_preference_max_wait: check a claim preference, return its max_wait_s."""
    if not isinstance(preference, dict):
        raise invalid(f"claim_tasks: preference must be a JSON object, got a JSON {json_type(preference)}")
    unknown = sorted(set(preference) - {"weights", "max_wait_s"})
    if unknown:
        raise invalid(f"claim_tasks: preference has an unknown key {lit(unknown[0])} (accepted: weights, max_wait_s)")
    weights = preference.get("weights")
    if not isinstance(weights, dict):
        raise invalid("claim_tasks: preference.weights must be an object of task type -> weight > 0")
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise invalid(f"claim_tasks: preference.weights.{key} must be a number > 0, got {json.dumps(value)}")
    wait = preference.get("max_wait_s")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 604800:
        shown = "nothing" if wait is None else json.dumps(wait)
        raise invalid(f"claim_tasks: preference.max_wait_s must be a number of seconds from 0 to 604800, got {shown}")
    return float(wait)


def preferred_order(
    conn: sqlite3.Connection, now_dt: datetime, plain: list[str], n: int, weights: dict[str, float],
    max_wait: float,
) -> list[str]:
    """sql/006's claim order with a preference, for a claim of any type: the first n in plain order plus the
    first n of each preferred type are the candidates; priority, then overdue (waited max_wait since run_at)
    first, then weight, then the plain order. The write lock is held, so no candidate can be taken meanwhile."""
    now = ts(now_dt)
    candidates = list(plain)
    for task_type in sorted(weights):
        candidates += [r[0] for r in conn.execute(q("claimable_task_ids_of_type"),
                                                  {"now": now, "task_type": task_type, "n": n})]
    return claim_order(conn, now_dt, candidates, n, weights, max_wait)


def claim_order(
    conn: sqlite3.Connection, now_dt: datetime, candidates: list[str], n: int, weights: dict[str, float],
    max_wait: float | None,
) -> list[str]:
    """The first n of ``candidates`` in claim order: with a preference (``max_wait``) sql/006's, else the
    plain order (priority, run_at, created_at, insertion)."""
    if not candidates:
        return []
    cutoff = ts(now_dt - timedelta(seconds=max_wait)) if max_wait is not None else None
    return [r[0] for r in conn.execute(q("preferred_claim_order"), {
        "ids": json.dumps(candidates), "cutoff": cutoff, "weights": json.dumps(weights), "n": n})]


def op_update_progress(
    conn: sqlite3.Connection,
    now: str,
    task_id: str,
    token: Any,
    progress: dict[str, Any] | None,
    checkpoint: dict[str, Any] | None,
) -> None:
    fn = "update_progress"
    token = lease_token(fn, token)
    check_object(fn, "progress", progress)
    check_object(fn, "checkpoint", checkpoint)
    held_task(conn, fn, task_id, token)
    conn.execute(
        q("update_progress"),
        {
            "task_id": task_id,
            "now": now,
            "progress": dumps(fn, "progress", progress),
            "checkpoint": dumps(fn, "checkpoint", checkpoint),
        },
    )


def op_complete(
    conn: sqlite3.Connection,
    now: str,
    task_id: str,
    token: Any,
    result: dict[str, Any] | None,
    output_url: str | None,
) -> sqlite3.Row:
    fn = "complete_task"
    token = lease_token(fn, token)
    check_object(fn, "result", result)
    # the happy path is one guarded UPDATE; only a miss pays for finding out why
    row = conn.execute(
        q("complete_task"),
        {
            "task_id": task_id,
            "lease_token": token,
            "now": now,
            "result": dumps(fn, "result", result if result is not None else {}),
            "output_url": output_url,
        },
    ).fetchone()
    if row is None:
        held_task(conn, fn, task_id, token)  # raises LeaseLost / TaskNotFound
    refresh_worker(conn, now, row["worker_id"], completed=1)
    return row


def op_fail(
    conn: sqlite3.Connection,
    now_dt: datetime,
    task_id: str,
    token: Any,
    error: str,
    details: dict[str, Any] | None,
    retryable: bool | None,
    backoff_base_s: float,
    backoff_cap_s: float,
) -> sqlite3.Row:
    fn = "fail_task"
    now = ts(now_dt)
    token = lease_token(fn, token)
    check_object(fn, "error_details", details)
    if not error:
        raise invalid(f"{fn}: error must say what went wrong (got an empty message)")
    if backoff_base_s < 0 or backoff_cap_s < 0:
        raise invalid(f"{fn}: backoff values must not be negative")
    held = held_task(conn, fn, task_id, token)
    worker_id, attempts = held["worker_id"], held["attempts"]
    retry = True if retryable is None else bool(retryable)
    extra = dict(details or {})
    if retry and attempts < held["max_attempts"]:
        delay = min(backoff_cap_s, backoff_base_s * 2 ** max(attempts - 1, 0)) * (0.5 + random.random() / 2)
        extra.update({"attempt": attempts, "retryable": True, "retry_in_s": round(delay, 3)})
        row = conn.execute(
            q("retry_task"),
            {
                "task_id": task_id,
                "now": now,
                "run_at": ts(now_dt + timedelta(seconds=delay)),
                "error": error,
                "error_details": dumps(fn, "error_details", extra),
            },
        ).fetchone()
    else:
        extra.update(
            {
                "attempt": attempts,
                "retryable": retry,
                "gave_up": "max_attempts reached" if retry else "permanent error",
            }
        )
        row = conn.execute(
            q("fail_task"),
            {
                "task_id": task_id,
                "now": now,
                "error": error,
                "error_details": dumps(fn, "error_details", extra),
            },
        ).fetchone()
        end_dependents(conn, now, task_id)
    refresh_worker(conn, now, worker_id, failed=1)
    return row


def op_release(conn: sqlite3.Connection, now: str, task_id: str, token: Any) -> sqlite3.Row:
    token = lease_token("release_task", token)
    held = held_task(conn, "release_task", task_id, token)
    row = conn.execute(q("release_task"), {"task_id": task_id, "now": now}).fetchone()
    refresh_worker(conn, now, held["worker_id"])
    return row


def op_cancel(conn: sqlite3.Connection, now: str, task_id: str, reason: str | None) -> sqlite3.Row:
    row = task_row(conn, "cancel_task", task_id)
    if row["status"] in ("complete", "failed"):
        raise invalid(f"cancel_task: task {task_id} is already {row['status']}; there is nothing to cancel")
    if row["status"] == "cancelled":
        return row
    # a running task keeps worker_id and lease_token until the worker's next heartbeat tells it to stop
    row = conn.execute(
        q("cancel_task"),
        {
            "task_id": task_id,
            "now": now,
            "error": reason if reason is not None else "cancelled by request",
        },
    ).fetchone()
    end_dependents(conn, now, task_id)
    refresh_worker(conn, now, row["worker_id"])
    return row


def op_requeue_stale(conn: sqlite3.Connection, now_dt: datetime, worker_timeout_s: Any) -> dict[str, Any]:
    now = ts(now_dt)
    timeout = check_seconds("requeue_stale", worker_timeout_s)
    requeued: list[str] = []
    failed: list[str] = []
    for r in conn.execute(q("expired_leases"), {"now": now}).fetchall():
        if r["attempts"] < r["max_attempts"]:
            conn.execute(q("requeue_expired"), {"task_id": r["task_id"], "now": now})
            requeued.append(r["task_id"])
        else:
            conn.execute(q("fail_expired"), {"task_id": r["task_id"], "now": now})
            failed.append(r["task_id"])
            end_dependents(conn, now, r["task_id"])
        refresh_worker(conn, now, r["worker_id"])
    # backstop for rows inserted directly whose dependency had already ended badly
    for (dep_id,) in conn.execute(q("ended_dependencies_of_queued")).fetchall():
        end_dependents(conn, now, dep_id)
    cutoff = ts(now_dt - timedelta(seconds=timeout))
    lost = sorted(r[0] for r in conn.execute(q("mark_lost_workers"), {"now": now, "cutoff": cutoff}).fetchall())
    return {"requeued": requeued, "failed": failed, "lost_workers": lost}


def has_claimable(conn: sqlite3.Connection, now: str, task_types: list[str] | None) -> bool:
    if not task_types:
        return bool(conn.execute(q("claimable_exists"), {"now": now}).fetchone()[0])
    return any(conn.execute(q("claimable_task_ids_of_type"), {"now": now, "task_type": t, "n": 1}).fetchone()
               for t in sorted({str(t) for t in task_types}))
