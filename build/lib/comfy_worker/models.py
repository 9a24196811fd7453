"""Plain data shared by every layer: tasks, workers, results. Frozen dataclasses, no behaviour beyond parsing."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)


class WorkerStatus(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"
    LOST = "lost"


def _json(value: Any) -> Any:
    """asyncpg without a codec and sqlite hand jsonb over as text; PostgREST as parsed JSON."""
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    text = str(value).replace("Z", "+00:00")
    if " " in text and "T" not in text:
        text = text.replace(" ", "T", 1)
    return datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Task:
    """One row of the ``tasks`` table, as a claimed or inspected task."""

    task_id: str
    task_type: str
    params: dict[str, Any]
    status: TaskStatus
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 3
    worker_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    run_at: datetime | None = None
    depends_on: tuple[str, ...] = ()
    dedupe_key: str | None = None
    progress: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    output_url: str | None = None
    error: str | None = None
    error_details: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> Task:
        """Build from a mapping with the column names of ``tasks`` (asyncpg Record, sqlite Row, JSON dict)."""
        r = dict(row)
        return cls(
            task_id=str(r["task_id"]),
            task_type=r["task_type"],
            params=_json(r.get("params")) or {},
            status=TaskStatus(r["status"]),
            priority=int(r.get("priority") or 0),
            attempts=int(r.get("attempts") or 0),
            max_attempts=int(r.get("max_attempts") or 1),
            worker_id=r.get("worker_id"),
            lease_token=str(r["lease_token"]) if r.get("lease_token") else None,
            lease_expires_at=_ts(r.get("lease_expires_at")),
            run_at=_ts(r.get("run_at")),
            depends_on=tuple(_json(r.get("depends_on")) or ()),
            dedupe_key=r.get("dedupe_key"),
            progress=_json(r.get("progress")),
            checkpoint=_json(r.get("checkpoint")),
            result=_json(r.get("result")),
            output_url=r.get("output_url"),
            error=r.get("error"),
            error_details=_json(r.get("error_details")),
            created_at=_ts(r.get("created_at")),
            started_at=_ts(r.get("started_at")),
            completed_at=_ts(r.get("completed_at")),
            updated_at=_ts(r.get("updated_at")),
        )


@dataclass(frozen=True, slots=True)
class NewTask:
    """What ``enqueue`` takes. ``task_id`` may be chosen by the caller for idempotent inserts."""

    task_type: str
    params: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    priority: int = 0
    max_attempts: int = 3
    depends_on: tuple[str, ...] = ()
    dedupe_key: str | None = None
    run_at: datetime | None = None
    callback_url: str | None = None  # where its end is POSTed (README "Webhooks"); None: the fleet's WEBHOOK_URL


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself when it registers."""

    worker_id: str
    host: str
    pid: int
    version: str
    task_types: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """Answer to a heartbeat: the worker's status as the queue sees it (``draining`` means: stop claiming)
    and the tasks it must stop working on."""

    worker_status: WorkerStatus
    cancelled: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> HeartbeatReply:
        v = _json(value)
        return cls(
            worker_status=WorkerStatus(v["worker_status"]),
            cancelled=tuple(v.get("cancelled") or ()),
            lost=tuple(v.get("lost") or ()),
        )


@dataclass(frozen=True, slots=True)
class StaleReport:
    """What ``requeue_stale`` did."""

    requeued: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    lost_workers: tuple[str, ...] = ()
    gone_workers: tuple[str, ...] = ()  # whose tasks went back because their presence lock was free (Postgres)
    # workers whose presence lock was found free but are still within their grace to reconnect (Postgres),
    # and when the first of those is due for another look
    presence_pending: tuple[str, ...] = ()
    recheck_in_s: float | None = None

    def __bool__(self) -> bool:
        """True when anything was recovered."""
        return bool(self.requeued or self.failed or self.lost_workers)

    def log_fields(self) -> dict[str, list[str]]:
        fields = {"requeued": list(self.requeued), "failed": list(self.failed), "lost_workers": list(self.lost_workers)}
        if self.gone_workers:
            fields["gone_workers"] = list(self.gone_workers)
        return fields

    @classmethod
    def from_json(cls, value: Any) -> StaleReport:
        v = _json(value)
        return cls(
            requeued=tuple(v.get("requeued") or ()),
            failed=tuple(v.get("failed") or ()),
            lost_workers=tuple(v.get("lost_workers") or ()),
            gone_workers=tuple(v.get("gone_workers") or ()),
            presence_pending=tuple(v.get("presence_pending") or ()),
            recheck_in_s=None if v.get("recheck_in_s") is None else float(v["recheck_in_s"]),
        )


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file a task produced, as listed in ``result.outputs``."""

    node_id: str
    kind: str  # image | video | audio | latent | other
    filename: str
    storage_path: str
    url: str
    bytes: int
    sha256: str
    content_type: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "kind": self.kind,
            "filename": self.filename,
            "storage_path": self.storage_path,
            "url": self.url,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "content_type": self.content_type,
        }


@dataclass(frozen=True, slots=True)
class ClaimPreference:
    """Engine / model affinity for a claim (sql/006_claim_affinity.sql): among tasks of equal priority, types
    with a higher weight go first (the ones this worker runs without an engine or model switch), except that a
    task waiting ``max_wait_s`` or longer since its run_at gives way to no preferred task."""

    weights: dict[str, float]
    max_wait_s: float

    def as_json(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "max_wait_s": self.max_wait_s}


WEBHOOK_EVENTS = ("task.completed", "task.failed", "task.cancelled", "task.progress")
DEFAULT_WEBHOOK_EVENTS = ("task.completed", "task.failed", "task.cancelled")


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One row of the webhook outbox (sql/008_webhooks.sql): an event and the state of its delivery."""

    id: int
    webhook_id: str  # the Standard Webhooks message id: the same on every attempt (the receiver's idempotency key)
    task_id: str
    event_type: str
    payload: dict[str, Any]
    url: str | None  # the task's callback_url; None: the fleet's WEBHOOK_URL
    state: str  # pending | delivering | delivered | failed
    attempts: int
    lease_token: str | None
    last_status: int | None
    last_error: str | None
    created_at: datetime | None
    next_try_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> WebhookEvent:
        r = dict(row)
        return cls(
            id=int(r["id"]),
            webhook_id=str(r["webhook_id"]),
            task_id=str(r["task_id"]),
            event_type=str(r["event_type"]),
            payload=_json(r.get("payload")) or {},
            url=r.get("url"),
            state=str(r["state"]),
            attempts=int(r.get("attempts") or 0),
            lease_token=str(r["lease_token"]) if r.get("lease_token") else None,
            last_status=r.get("last_status"),
            last_error=r.get("last_error"),
            created_at=_ts(r.get("created_at")),
            next_try_at=_ts(r.get("next_try_at")),
            delivered_at=_ts(r.get("delivered_at")),
        )
