"""The control loop: every interval read the fleet, recover stale work, decide, act; now and then reconcile.

One cycle (:meth:`Orchestrator.run_once`):
1. ``requeue_stale()`` (expired leases back to the queue, silent workers marked ``lost``);
2. read ``orchestrator_fleet()``, ask :func:`gpu_orchestrator.policy.decide`: ONE ``orchestrator_decision``
   log event carries the inputs (queue depth, oldest age, counts), desired, the action and the reasons;
3. act: terminate pods of stopped / lost workers and stuck spawns, set surplus idle workers ``draining``,
   create pods (each first recorded as a ``starting`` workers row, then updated with the pod id);
4. every ``reconcile_every`` cycles compare the provider's pod list with the workers table both ways.

A failed create stops spawning for this cycle and blocks spawning for a growing backoff, so provider errors
never turn into a pile of pods. ``dry_run``: no writes and no provider calls, decisions are only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from comfy_worker.errors import StoreError
from comfy_worker.logs import get_logger
from comfy_worker.store.base import TaskStore
from gpu_orchestrator.errors import ProviderError
from gpu_orchestrator.fleet import fleet_state, fleet_store
from gpu_orchestrator.policy import ACTIVE, Action, Decision, decide
from gpu_orchestrator.provider import GONE, TERMINATED, PodRequest, Provider
from gpu_orchestrator.settings import OrchestratorSettings

log = get_logger(__name__)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Orchestrator:
    def __init__(
        self,
        store: TaskStore,
        provider: Provider | None,
        settings: OrchestratorSettings,
        *,
        queue_env: dict[str, str],
        worker_timeout_s: float = 90.0,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if provider is None and not dry_run:
            raise ValueError("a provider is required unless dry_run")
        self.store, self.provider, self.settings = store, provider, settings
        self.fleet = fleet_store(store)
        self.params = settings.policy()
        self.queue_env = queue_env
        self.worker_timeout_s = worker_timeout_s
        self.dry_run = dry_run
        self.clock = clock
        self.cycle = 0
        self.last_scale_down: float | None = None
        self.spawn_failures = 0
        self.spawn_blocked_until = 0.0

    # --- one cycle ------------------------------------------------------------------------------------------

    async def run_once(self) -> Decision:
        self.cycle += 1
        if not self.dry_run:
            stale = await self.store.requeue_stale(self.worker_timeout_s)
            if stale:
                log.warning("stale_recovered", **stale.log_fields())
        raw = await self.fleet.orchestrator_fleet()
        state = fleet_state(raw, self.last_scale_down)
        now = self.clock()
        decision = decide(state, self.params, now)
        blocked = decision.spawn > 0 and now < self.spawn_blocked_until
        log.info(
            "orchestrator_decision",
            cycle=self.cycle,
            dry_run=self.dry_run,
            spawn_blocked_s=round(self.spawn_blocked_until - now, 1) if blocked else 0,
            **decision.log_fields(),
        )
        if self.dry_run:
            return decision
        status = {w.worker_id: w.status for w in state.workers}
        await self._terminate(decision.terminate, status)
        if decision.cancel:
            await self._terminate(await self._cancel(decision.cancel), status)
        if decision.drain:
            self.last_scale_down = now
            await self._drain(decision.drain)
        if decision.spawn and not blocked:
            await self._spawn(decision.spawn)
        if self.cycle % self.settings.reconcile_every == 0:
            await self.reconcile()
        return decision

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except StoreError as exc:
                log.error("orchestrator_cycle_failed", error=str(exc), error_type=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.interval_s)

    # --- actions --------------------------------------------------------------------------------------------

    async def _terminate(self, actions: tuple[Action, ...], status: dict[str, str]) -> None:
        assert self.provider is not None
        for a in actions:
            if a.pod_id:
                try:
                    await self.provider.terminate_pod(a.pod_id)
                except ProviderError as exc:
                    log.warning(
                        "pod_terminate_failed",
                        worker_id=a.worker_id,
                        pod_id=a.pod_id,
                        error=str(exc),
                        status=exc.status,
                    )
                    continue
            # a spawn that never worked (stuck, or cancelled and so draining) ends stopped; lost stays lost
            before = status.get(a.worker_id, "stopped")
            after = "stopped" if before in ("starting", "draining") else before
            await self.store.set_worker_status(
                a.worker_id,
                after,
                {"pod_terminated": True, "terminated_at": _now_iso(), "terminated_reason": a.reason},
            )
            log.info("pod_terminated", worker_id=a.worker_id, pod_id=a.pod_id, reason=a.reason)

    async def _cancel(self, actions: tuple[Action, ...]) -> tuple[Action, ...]:
        """Cancel spawns that have not registered (``cancel_spawn()``); the ones that did keep their pods and
        are left to the idle rule. Returns the cancelled ones, whose pods are to be terminated."""
        cancelled = []
        for a in actions:
            if await self.fleet.cancel_spawn(a.worker_id, {"cancel_reason": a.reason, "cancelled_at": _now_iso()}):
                cancelled.append(a)
                log.info("spawn_cancelled", worker_id=a.worker_id, pod_id=a.pod_id, reason=a.reason)
            else:
                log.info("spawn_cancel_skipped", worker_id=a.worker_id, pod_id=a.pod_id, reason="already registered")
        return tuple(cancelled)

    async def _drain(self, actions: tuple[Action, ...]) -> None:
        for a in actions:
            await self.store.set_worker_status(
                a.worker_id, "draining", {"drain_reason": a.reason, "drain_requested_at": _now_iso()}
            )
            log.info("worker_draining", worker_id=a.worker_id, pod_id=a.pod_id, reason=a.reason)

    def pod_request(self, worker_id: str) -> PodRequest:
        s = self.settings
        env = {**self.queue_env, **s.pod_env, "WORKER_ID": worker_id}
        return PodRequest(
            name=worker_id,
            image=s.image,
            gpu_types=s.gpu_types,
            env=env,
            cloud=s.cloud_type,
            disk_gb=s.container_disk_gb,
            volume_gb=s.volume_gb,
            network_volume_id=s.network_volume_id,
            volume_path=s.volume_path,
        )

    async def _spawn(self, n: int) -> None:
        assert self.provider is not None
        for _ in range(n):
            worker_id = f"{self.settings.worker_prefix}{uuid.uuid4().hex[:10]}"
            await self.fleet.record_spawned_worker(
                worker_id, {"orchestrator": True, "pod_name": worker_id, "spawned_at": _now_iso()}
            )
            try:
                pod = await self.provider.create_pod(self.pod_request(worker_id))
            except ProviderError as exc:
                self.spawn_failures += 1
                backoff = min(
                    self.settings.spawn_backoff_max_s,
                    self.settings.interval_s * 2 ** (self.spawn_failures - 1),
                )
                self.spawn_blocked_until = self.clock() + backoff
                await self.store.set_worker_status(
                    worker_id, "stopped", {"spawn_error": str(exc), "pod_terminated": True}
                )
                log.error(
                    "pod_create_failed",
                    worker_id=worker_id,
                    error=str(exc),
                    status=exc.status,
                    error_type=type(exc).__name__,
                    consecutive_failures=self.spawn_failures,
                    spawning_paused_s=round(backoff, 1),
                )
                return
            self.spawn_failures = 0
            await self.fleet.record_spawned_worker(
                worker_id,
                {"pod_id": pod.id, "cost_per_hour": pod.cost_per_hour, "gpu_type": pod.gpu_type},
            )
            log.info(
                "pod_created",
                worker_id=worker_id,
                pod_id=pod.id,
                gpu_type=pod.gpu_type,
                cost_per_hour=pod.cost_per_hour,
            )

    # --- reconcile ------------------------------------------------------------------------------------------

    async def reconcile(self) -> dict[str, list[str]]:
        """Provider pods vs workers table, both ways: our pods with no live worker row are terminated (or
        adopted by a row that lacks its pod id); live rows whose pod vanished or exited are marked lost."""
        assert self.provider is not None
        done: dict[str, list[str]] = {"orphans_terminated": [], "adopted": [], "marked_lost": []}
        try:
            pods = [p for p in await self.provider.list_pods() if p.name.startswith(self.settings.worker_prefix)]
        except ProviderError as exc:
            log.warning("reconcile_skipped", error=str(exc), status=exc.status)
            return done
        raw = await self.fleet.orchestrator_fleet()
        rows: dict[str, dict[str, Any]] = {}
        for w in raw.get("workers") or ():
            rows[(w.get("metadata") or {}).get("pod_name") or w["id"]] = w
        for pod in pods:
            if pod.status == TERMINATED:
                continue
            row = rows.get(pod.name)
            meta = (row or {}).get("metadata") or {}
            if row is not None and row["status"] in ACTIVE and not meta.get("pod_id"):
                await self.fleet.record_spawned_worker(
                    row["id"], {"pod_id": pod.id, "cost_per_hour": pod.cost_per_hour}
                )
                done["adopted"].append(pod.id)
            elif row is None or meta.get("pod_terminated"):
                try:
                    await self.provider.terminate_pod(pod.id)
                    done["orphans_terminated"].append(pod.id)
                except ProviderError as exc:
                    log.warning("pod_terminate_failed", pod_id=pod.id, error=str(exc), status=exc.status)
        alive = {p.id for p in pods if p.status not in GONE}
        present = {p.id for p in pods if p.status != TERMINATED}
        for row in rows.values():
            pod_id = (row.get("metadata") or {}).get("pod_id")
            if pod_id and row["status"] in ACTIVE and pod_id not in alive:
                await self.store.set_worker_status(
                    row["id"],
                    "lost",
                    {
                        "lost_reason": "pod vanished from the provider" if pod_id not in present else "pod exited",
                        "pod_terminated": pod_id not in present,
                    },
                )
                done["marked_lost"].append(row["id"])
        log.info("reconciled", pods=len(pods), **done)
        return done
