"""The orchestrator's reads and writes of the queue, over comfy_worker's asyncpg store.

Two SQL functions from ``comfy_worker/sql/004_orchestrator.sql`` that the TaskStore protocol does not have
yet (``record_spawned_worker``, ``orchestrator_fleet``) are called through the Postgres store's call path;
everything else goes through the protocol (``requeue_stale``, ``set_worker_status``).
"""

from __future__ import annotations

from typing import Any

from comfy_worker.errors import ConfigError
from comfy_worker.models import _json
from comfy_worker.store.base import TaskStore
from gpu_orchestrator.policy import FleetState, WorkerView

ARRIVAL_WINDOW_S = 600.0  # orchestrator_fleet() counts arrivals over the last 10 minutes


def _call(store: TaskStore) -> Any:
    call = getattr(store, "_call", None)
    if call is None:
        raise ConfigError(
            "DATABASE_URL",
            f"the orchestrator needs the Postgres store (got {store.name}); "
            "set DATABASE_URL=postgresql://… (a Supabase project's direct connection string works)",
        )
    return call


async def record_spawned_worker(store: TaskStore, worker_id: str, metadata: dict[str, Any]) -> None:
    """Insert a 'starting' row for a pod being created (or merge metadata into the existing row)."""
    await _call(store)("val", "select (record_spawned_worker($1, $2)).id", worker_id, metadata)


async def read_fleet(store: TaskStore) -> dict[str, Any]:
    return dict(_json(await _call(store)("val", "select orchestrator_fleet()")))


def worker_views(raw: dict[str, Any]) -> tuple[WorkerView, ...]:
    out = []
    for w in raw.get("workers") or ():
        meta = w.get("metadata") or {}
        cost = meta.get("cost_per_hour")
        out.append(
            WorkerView(
                worker_id=w["id"],
                status=w["status"],
                age_s=float(w.get("age_s") or 0.0),
                idle_s=float(w.get("idle_s") or 0.0),
                pod_id=meta.get("pod_id"),
                cost_per_hour=float(cost) if isinstance(cost, (int, float)) else None,
                pod_terminated=bool(meta.get("pod_terminated")),
            )
        )
    return tuple(out)


def fleet_state(raw: dict[str, Any], last_scale_down_at: float | None = None) -> FleetState:
    """The policy's view of one ``orchestrator_fleet()`` answer."""
    queue = raw.get("queue") or []
    return FleetState(
        queued_by_type={q["task_type"]: int(q["queued"]) for q in queue if int(q["queued"])},
        running=sum(int(q["running"]) for q in queue),
        oldest_queued_age_s=max((float(q["oldest_queued_age_s"] or 0.0) for q in queue), default=0.0),
        recent_durations_s=tuple(float(d) for d in raw.get("durations_s") or () if d is not None),
        arrival_rate_per_s=int(raw.get("arrivals_10m") or 0) / ARRIVAL_WINDOW_S,
        arrivals_per_min=tuple(int(n) for n in raw.get("arrivals_per_min") or ()),
        workers=worker_views(raw),
        last_scale_down_at=last_scale_down_at,
    )
