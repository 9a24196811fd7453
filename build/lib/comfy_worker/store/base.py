"""The TaskStore interface: what the daemon, the CLI and the orchestrator need from the queue.

Three implementations: :mod:`.postgres` (asyncpg, calls the SQL functions in sql/), :mod:`.supabase`
(supabase-py ``rpc()`` to the same functions) and :mod:`.sqlite` (embedded, mirrors their semantics for a
single host). ``tests/integration/test_store_conformance.py`` runs one suite against all three.

Every method raises only :mod:`comfy_worker.errors` exceptions: ``StoreUnavailable`` when the database
cannot be reached (retry later), ``LeaseLost`` when a report carries a stale lease token, ``TaskNotFound`` /
``WorkerNotFound`` / ``InvalidArgument`` for bad input.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from comfy_worker.models import (
    ClaimPreference,
    HeartbeatReply,
    NewTask,
    StaleReport,
    Task,
    WebhookEvent,
    WorkerInfo,
)

DEFAULT_BACKOFF_BASE_S = 5.0
DEFAULT_BACKOFF_CAP_S = 300.0
# webhook deliveries (sql/008_webhooks.sql): 5 s, 10 s, 20 s, … doubling to 1 h between tries, each times
# uniform(0.5, 1), for 24 h after the first attempt
WEBHOOK_BACKOFF_BASE_S = 5.0
WEBHOOK_BACKOFF_CAP_S = 3600.0
WEBHOOK_RETRY_FOR_S = 86400.0


@runtime_checkable
class TaskStore(Protocol):
    """Async access to the queue. One instance per process; safe to share between coroutines."""

    name: str

    async def connect(self) -> None:
        """Open connections and check the schema (``SchemaMissing`` if absent and not migrating)."""

    async def close(self) -> None: ...

    async def check_schema(self) -> None:
        """Raise SchemaMissing (saying how to apply sql/) unless the queue's tables and functions exist."""

    async def migrate(self) -> list[str]:
        """Apply the schema; return what was applied (empty when already current). Idempotent."""
        ...

    # workers
    async def register_worker(self, info: WorkerInfo) -> None: ...
    async def deregister_worker(self, worker_id: str) -> None: ...
    async def set_worker_status(
        self, worker_id: str, status: str, metadata: dict[str, Any] | None = None
    ) -> None: ...
    async def heartbeat(
        self, worker_id: str, lease_seconds: float, metadata: dict[str, Any] | None = None,
        task_ids: list[str] | None = None,
    ) -> HeartbeatReply: ...

    # tasks
    async def enqueue(self, task: NewTask) -> Task: ...
    async def get_task(self, task_id: str) -> Task: ...
    async def claim(
        self, worker_id: str, task_types: list[str] | None, n: int, lease_seconds: float,
        preference: ClaimPreference | None = None,
    ) -> list[Task]:
        """Up to ``n`` claimable tasks in claim order; ``preference`` (optional) applies engine/model affinity
        within a bounded wait (sql/006_claim_affinity.sql)."""
        ...
    async def update_progress(
        self, task_id: str, lease_token: str, progress: dict[str, Any] | None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None: ...
    async def complete(
        self, task_id: str, lease_token: str, result: dict[str, Any], output_url: str | None = None
    ) -> Task: ...
    async def fail(
        self, task_id: str, lease_token: str, error: str, details: dict[str, Any] | None = None,
        retryable: bool = True, backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    ) -> Task: ...
    async def release(self, task_id: str, lease_token: str) -> Task: ...
    async def cancel(self, task_id: str, reason: str | None = None) -> Task: ...
    async def requeue_stale(self, worker_timeout_s: float = 90.0) -> StaleReport: ...

    # monitoring
    async def fleet_snapshot(self) -> dict[str, Any]:
        """``{"queue": [...], "workers": [...], "throughput": [...], "failures": [...]}`` from the views."""
        ...

    async def wait_for_work(self, timeout: float) -> bool:
        """Return when new work may be claimable (True) or after ``timeout`` seconds (False)."""
        ...

    async def work_ready(self, task_types: list[str] | None = None) -> bool:
        """Is a task of ``task_types`` (None or empty: any) queued and due now? The claim's own per-type lookup
        (``work_ready()`` in sql/, the claim queries on SQLite), stopping at the first such task."""
        ...

    # webhooks (sql/008_webhooks.sql): the outbox rows are written by triggers when a task ends
    async def webhook_configure(self, default_url: bool, events: list[str] | None) -> None:
        """Tell the fleet whether events without a callback_url have somewhere to go (a WEBHOOK_URL), and
        which events to record."""

    async def claim_webhooks(
        self, worker_id: str, n: int, lease_seconds: float, default_url: bool
    ) -> list[WebhookEvent]:
        """Up to ``n`` due deliveries (each task's oldest undelivered event only), leased to ``worker_id``."""
        ...

    async def report_webhook(
        self, event_id: int, lease_token: str, outcome: str, status: int | None = None, error: str | None = None,
        backoff_base_s: float = WEBHOOK_BACKOFF_BASE_S, backoff_cap_s: float = WEBHOOK_BACKOFF_CAP_S,
        retry_for_s: float = WEBHOOK_RETRY_FOR_S,
    ) -> WebhookEvent:
        """Record one attempt: ``delivered``, ``retry`` (backs off, or gives up after ``retry_for_s``) or
        ``failed``. ``LeaseLost`` when another worker took the delivery over."""
        ...

    async def replay_webhooks(self, task_id: str) -> int:
        """Send a task's events again (same webhook-id); one for how it ended if it has none."""
        ...

    async def webhook_deliveries(self, task_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Rows of the ``webhook_deliveries`` view, newest first."""
        ...


@runtime_checkable
class FleetStore(Protocol):
    """What gpu_orchestrator needs beyond :class:`TaskStore` (``sql/004_orchestrator.sql``). Postgres and
    Supabase have it; the embedded SQLite store does not (pods on other machines cannot reach its file)."""

    name: str

    async def record_spawned_worker(self, worker_id: str, metadata: dict[str, Any]) -> None:
        """Insert a 'starting' row for a pod being created, or merge metadata into the existing row."""

    async def cancel_spawn(self, worker_id: str, metadata: dict[str, Any] | None = None) -> bool:
        """'starting' -> 'draining' (spawn_cancelled) if the pod has not registered; False if it has."""
        ...

    async def orchestrator_fleet(self) -> dict[str, Any]:
        """Everything the scaling policy reads: queue, workers, recent durations, arrivals."""
        ...
