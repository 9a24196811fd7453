"""The orchestrator's view of the queue: ``orchestrator_fleet()`` (``comfy_worker/sql/004_orchestrator.sql``)
read through comfy_worker's store layer and turned into the policy's :class:`FleetState`.

The store must be a :class:`~comfy_worker.store.base.FleetStore` (Postgres or Supabase); the embedded SQLite
store is refused with what to set instead.
"""

from __future__ import annotations

from typing import Any

from comfy_worker.errors import ConfigError
from comfy_worker.store.base import FleetStore, TaskStore
from gpu_orchestrator.policy import FleetState, WorkerView

ARRIVAL_WINDOW_S = 600.0  # orchestrator_fleet() counts arrivals over the last 10 minutes


def fleet_store(store: TaskStore) -> FleetStore:
    """``store`` as a FleetStore, or a ConfigError saying which queue the orchestrator needs."""
    if not isinstance(store, FleetStore):
        raise ConfigError(
            "DATABASE_URL",
            f"the orchestrator needs the queue in Postgres or Supabase (got the {store.name} store); "
            "set DATABASE_URL=postgresql://… or SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY",
        )
    return store


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
                spawn_cancelled=bool(meta.get("spawn_cancelled")),
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
        recent_spawn_delays_s=tuple(float(d) for d in raw.get("spawn_delays_s") or () if d is not None),
        workers=worker_views(raw),
        last_scale_down_at=last_scale_down_at,
    )
