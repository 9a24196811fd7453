"""The webhook outbox's rules for the embedded SQLite store: the functions of sql/008_webhooks.sql and
sql/009_webhooks_review.sql, in Python.

Each ``op_*`` runs inside the store's ``BEGIN IMMEDIATE`` transaction (nobody else writes meanwhile, so the
claim needs no SKIP LOCKED) and gets ``now`` as a datetime read once the write lock was taken. The event rows
themselves are written by the triggers of sql/sqlite/009_webhooks_review.sql, in the transaction that ended
the task; their body's data is its ``_cw_webhook_data`` view, which replay reads too.
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
    """Whether some worker has a WEBHOOK_URL, and the fleet's events (None: keep them; the defaults at first)."""
    for e in events or ():
        if e not in WEBHOOK_EVENTS:
            raise invalid(f"webhook_configure: unknown event {e!r} (known: {', '.join(WEBHOOK_EVENTS)})")
    chosen = json.dumps(list(events)) if events is not None else None
    conn.execute(
        "insert into webhook_config (id, default_url, events, updated_at) values (1, :url, coalesce(:events, :dflt),"
        " :now) on conflict (id) do update set default_url = excluded.default_url,"
        " events = coalesce(:events, events), updated_at = excluded.updated_at"
        " where default_url is not excluded.default_url or events is not coalesce(:events, events)",
        {"url": int(bool(default_url)), "events": chosen, "dflt": json.dumps(list(DEFAULT_WEBHOOK_EVENTS)),
         "now": ts(now)},
    )


def op_claim(
    conn: sqlite3.Connection, now_dt: datetime, worker_id: str, n: int, lease_seconds: float, default_url: bool
) -> list[dict[str, Any]]:
    lease = check_seconds("claim_webhook_events", lease_seconds)
    now = ts(now_dt)
    ids = [
        r[0]
        for r in conn.execute(
            "select e.id from webhook_events e"  # delivering: next_try_at is the lease's expiry
            " where e.state in ('pending', 'delivering') and e.next_try_at <= :now"
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
    """Every event of the task not being delivered now: pending, due now, as a new delivery (attempts 0, no last
    status or error, a fresh retry window), the same webhook-id and body."""
    task = task_row(conn, "replay_webhook_events", task_id)
    count = conn.execute(
        "update webhook_events set state = 'pending', attempts = 0, next_try_at = ?, retry_until = null,"
        " claimed_by = null, lease_token = null, lease_expires_at = null, last_status = null, last_error = null,"
        " delivered_at = null, updated_at = ? where task_id = ? and state <> 'delivering'",
        (now, now, task_id),
    ).rowcount
    if count == 0 and conn.execute("select 1 from webhook_events where task_id = ?", (task_id,)).fetchone() is None:
        if _EVENT_OF_STATUS.get(task["status"]) is None:
            raise invalid(f"replay_webhook_events: task {task_id} is {task['status']}: it has no end to report yet")
        conn.execute(
            "insert into webhook_events (task_id, event_type, payload, url, created_at, next_try_at, updated_at)"
            " select task_id, end_event, data, callback_url, ?, ?, ? from _cw_webhook_data where task_id = ?",
            (now, now, now, task_id),
        )
        count = 1
    return count


def op_deliveries(conn: sqlite3.Connection, task_id: str | None, limit: int) -> list[dict[str, Any]]:
    if task_id is None:
        rows = conn.execute("select * from webhook_deliveries limit ?", (limit,)).fetchall()
    else:
        rows = conn.execute("select * from webhook_deliveries where task_id = ? limit ?", (task_id, limit)).fetchall()
    return [dict(r) for r in rows]
