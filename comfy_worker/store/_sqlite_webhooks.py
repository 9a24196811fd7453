"""The webhook outbox's rules for the embedded SQLite store: sql/008_webhooks.sql's functions, in Python.

Each ``op_*`` runs inside the store's ``BEGIN IMMEDIATE`` transaction (nobody else writes meanwhile, so the
claim needs no SKIP LOCKED) and gets ``now`` as a datetime read once the write lock was taken. The event rows
themselves are written by the triggers of sql/sqlite/008_webhooks.sql, in the transaction that ended the task.
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from datetime import datetime, timedelta
from typing import Any

from comfy_worker.errors import LeaseLost, TaskNotFound
from comfy_worker.models import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS
from comfy_worker.store._sqlite_common import check_seconds, invalid, task_row, ts

_OUTCOMES = ("delivered", "retry", "failed")
_EVENT_OF_STATUS = {"complete": "task.completed", "failed": "task.failed", "cancelled": "task.cancelled"}


def op_configure(conn: sqlite3.Connection, now: datetime, default_url: bool, events: list[str] | None) -> None:
    chosen = list(events) if events is not None else list(DEFAULT_WEBHOOK_EVENTS)
    for e in chosen:
        if e not in WEBHOOK_EVENTS:
            raise invalid(f"webhook_configure: unknown event {e!r} (known: {', '.join(WEBHOOK_EVENTS)})")
    conn.execute(
        "insert into webhook_config (id, default_url, events, updated_at) values (1, ?, ?, ?)"
        " on conflict (id) do update set default_url = excluded.default_url, events = excluded.events,"
        " updated_at = excluded.updated_at"
        " where default_url is not excluded.default_url or events is not excluded.events",
        (int(bool(default_url)), json.dumps(chosen), ts(now)),
    )


def op_claim(
    conn: sqlite3.Connection, now_dt: datetime, worker_id: str, n: int, lease_seconds: float, default_url: bool
) -> list[dict[str, Any]]:
    lease = check_seconds("claim_webhook_events", lease_seconds)
    now = ts(now_dt)
    ids = [
        r[0]
        for r in conn.execute(
            "select e.id from webhook_events e"
            " where e.state in ('pending', 'delivering') and e.next_try_at <= :now"
            "   and (e.state = 'pending' or e.lease_expires_at < :now)"
            "   and (e.url is not null or :default_url)"
            "   and not exists (select 1 from webhook_events p where p.task_id = e.task_id and p.id < e.id"
            "                    and p.state in ('pending', 'delivering'))"
            " order by e.next_try_at, e.id limit :n",
            {"now": now, "default_url": int(bool(default_url)), "n": max(int(n), 0)},
        ).fetchall()
    ]
    expires = ts(now_dt + timedelta(seconds=lease))
    out = []
    for event_id in ids:
        row = conn.execute(
            "update webhook_events set state = 'delivering', attempts = attempts + 1, claimed_by = ?,"
            " lease_token = ?, lease_expires_at = ?, next_try_at = ?, updated_at = ? where id = ? returning *",
            (worker_id, str(uuid.uuid4()), expires, expires, now, event_id),
        ).fetchone()
        out.append(dict(row))
    return out


def op_report(
    conn: sqlite3.Connection, now_dt: datetime, event_id: int, token: str, outcome: str, status: int | None,
    error: str | None, backoff_base_s: float, backoff_cap_s: float, retry_for_s: float,
) -> dict[str, Any]:
    if outcome not in _OUTCOMES:
        raise invalid(f"report_webhook_event: outcome must be delivered, retry or failed (got {outcome!r})")
    now = ts(now_dt)
    row = conn.execute("select * from webhook_events where id = ?", (event_id,)).fetchone()
    if row is None:
        raise TaskNotFound(f"report_webhook_event: no webhook event has id {event_id}", details={"sqlstate": "CW002"})
    if row["state"] != "delivering" or row["lease_token"] != str(token):
        held = f", now held by worker {row['claimed_by']}" if row["state"] == "delivering" else ""
        raise LeaseLost(
            f"report_webhook_event: report for webhook event {event_id} rejected: it is {row['state']}{held}",
            details={"sqlstate": "CW001"},
        )
    until = row["retry_until"] or ts(now_dt + timedelta(seconds=retry_for_s))
    if outcome == "retry" and now < until:
        delay = min(backoff_cap_s, backoff_base_s * 2 ** max(row["attempts"] - 1, 0)) * (0.5 + random.random() / 2)
        out = conn.execute(
            "update webhook_events set state = 'pending', next_try_at = ?, retry_until = ?, lease_token = null,"
            " lease_expires_at = null, last_status = ?, last_error = ?, updated_at = ? where id = ? returning *",
            (ts(now_dt + timedelta(seconds=delay)), until, status, (error or "")[:1000] or None, now, event_id),
        ).fetchone()
    else:
        if outcome == "delivered":
            last_error = None
        elif outcome == "retry":
            last_error = f"gave up after {row['attempts']} attempts: {error}"[:1000]
        else:
            last_error = (error or "")[:1000] or None
        out = conn.execute(
            "update webhook_events set state = ?, retry_until = ?, lease_token = null, lease_expires_at = null,"
            " last_status = ?, last_error = ?, delivered_at = ?, updated_at = ? where id = ? returning *",
            ("delivered" if outcome == "delivered" else "failed", until, status, last_error,
             now if outcome == "delivered" else None, now, event_id),
        ).fetchone()
    return dict(out)


def op_replay(conn: sqlite3.Connection, now: str, task_id: str) -> int:
    task = task_row(conn, "replay_webhook_events", task_id)
    count = conn.execute(
        "update webhook_events set state = 'pending', next_try_at = ?, retry_until = null, lease_token = null,"
        " lease_expires_at = null, delivered_at = null, updated_at = ? where task_id = ? and state <> 'delivering'",
        (now, now, task_id),
    ).rowcount
    if count == 0 and conn.execute("select 1 from webhook_events where task_id = ?", (task_id,)).fetchone() is None:
        event = _EVENT_OF_STATUS.get(task["status"])
        if event is None:
            raise invalid(f"replay_webhook_events: task {task_id} is {task['status']}: it has no end to report yet")
        conn.execute(
            "insert into webhook_events (task_id, event_type, payload, url, created_at, next_try_at, updated_at)"
            " select task_id, ?, json_object('task_id', task_id, 'task_type', task_type, 'status', status,"
            " 'attempts', attempts, 'max_attempts', max_attempts, 'worker_id', worker_id, 'output_url', output_url,"
            " 'result', json(result), 'progress', json(progress), 'error', error,"
            " 'error_details', json(error_details), 'created_at', created_at, 'started_at', started_at,"
            " 'completed_at', completed_at), callback_url, ?, ?, ? from tasks where task_id = ?",
            (event, now, now, now, task_id),
        )
        count = 1
    return count


def op_deliveries(conn: sqlite3.Connection, task_id: str | None, limit: int) -> list[dict[str, Any]]:
    if task_id is None:
        rows = conn.execute("select * from webhook_deliveries limit ?", (limit,)).fetchall()
    else:
        rows = conn.execute("select * from webhook_deliveries where task_id = ? limit ?", (task_id, limit)).fetchall()
    return [dict(r) for r in rows]
