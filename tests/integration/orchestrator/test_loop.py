"""The control loop against real Postgres and the RunPod v2 stand-in, whose pods are real worker daemons
(``python -m comfy_worker``) sharing one test ComfyUI, running a tiny real workflow (CWSlow + SaveImage)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from comfy_worker.models import NewTask, TaskStatus, WorkerInfo
from comfy_worker.store.postgres import PostgresStore
from gpu_orchestrator.loop import Orchestrator
from gpu_orchestrator.runpod import RunPodClient
from gpu_orchestrator.settings import OrchestratorSettings
from tests.integration.daemon import workflows as wf
from tests.integration.engine.conftest import ComfyServer
from tests.standins.runpod import RunPodStandIn, StandInPod

REPO = Path(__file__).resolve().parents[3]
# the daemon's fast test intervals (tests/integration/daemon/conftest.py FAST); leases long enough that CPU
# load on a 2-core machine cannot fake a lost worker
FAST = {
    "HEARTBEAT_INTERVAL": "0.3",
    "LEASE_SECONDS": "10",
    "POLL_INTERVAL": "0.2",
    "STALE_CHECK_INTERVAL": "0.5",
    "PROGRESS_INTERVAL_S": "0.5",
    "SHUTDOWN_GRACE_S": "5",
    "ALLOW_PRIVATE_URLS": "true",
    "LOG_FORMAT": "json",
}

SETTINGS = OrchestratorSettings(
    interval_s=0.5,
    min_workers=0,
    max_workers=3,  # 2 cores: at most three daemons next to ComfyUI
    idle_timeout_s=1.0,
    spawn_timeout_s=90.0,
    staffing_beta=0.0,  # size to the backlog only, so an empty queue means no pods
    target_p_wait=0.0,
    warm_p=0.0,
    reconcile_every=2,
    runpod_api_key="test-key",
    gpu_types=("NVIDIA GeForce RTX 4090",),
    image="ghcr.io/example/comfy-worker:test",
)


def daemon_command(pod: StandInPod) -> list[str]:
    """What a stand-in pod runs: the real worker daemon; WORKER_ID and the rest come from the pod's env."""
    return [sys.executable, "-m", "comfy_worker", "worker"]


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, listen=False)
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
async def standin() -> AsyncIterator[RunPodStandIn]:
    s = RunPodStandIn(command=daemon_command)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def pod_env(comfyui_server: ComfyServer, tmp_path: Path) -> dict[str, str]:
    return {**FAST, "COMFY_URL": comfyui_server.base_url, "LOCAL_STORAGE_DIR": str(tmp_path / "storage")}


def orchestrator(
    store: PostgresStore,
    standin: RunPodStandIn,
    pg_dsn: str,
    key: str = "test-key",
    settings: OrchestratorSettings = SETTINGS,
    worker_timeout_s: float = 15.0,
    **kw,
) -> Orchestrator:
    client = RunPodClient(key, standin.url, backoff_s=0.01, max_attempts=3)
    env = {"DATABASE_URL": pg_dsn, "PYTHONPATH": str(REPO)}
    return Orchestrator(store, client, settings, queue_env=env, worker_timeout_s=worker_timeout_s, **kw)


async def cycle_until(orch: Orchestrator, done: Callable[[], Awaitable[bool]], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, "condition not reached in time"
        await orch.run_once()
        await asyncio.sleep(orch.settings.interval_s)


async def _fetch(pg_dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _enqueue(store: PostgresStore, n: int, seconds: float) -> list[str]:
    return [
        (await store.enqueue(NewTask("comfy", {"workflow": wf.slow(seconds)}, max_attempts=3))).task_id
        for _ in range(n)
    ]


def _all_complete(store: PostgresStore, ids: list[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        statuses = [(await store.get_task(i)).status for i in ids]
        bad = [s for s in statuses if s in (TaskStatus.FAILED, TaskStatus.CANCELLED)]
        assert not bad, f"tasks ended {bad}"
        return all(s is TaskStatus.COMPLETE for s in statuses)

    return check


@pytest.mark.comfyui
@pytest.mark.slow
async def test_queue_spawns_pods_that_finish_the_work_then_are_drained_and_terminated(store, standin, pg_dsn, pod_env):
    ids = await _enqueue(store, 20, 0.3)
    orch = orchestrator(store, standin, pg_dsn, settings=replace(SETTINGS, pod_env=pod_env))
    first = await orch.run_once()
    assert first.spawn == 3 and len(standin.live()) == 3  # capped by MAX_WORKERS
    rows = await _fetch(pg_dsn, "select status, metadata->>'pod_id' as pod_id from workers")
    assert {r["status"] for r in rows} <= {"starting", "idle", "busy"} and all(r["pod_id"] for r in rows)

    await cycle_until(orch, _all_complete(store, ids), timeout=100)
    tasks = [await store.get_task(i) for i in ids]
    assert all(t.status is TaskStatus.COMPLETE and t.result for t in tasks)

    async def fleet_gone() -> bool:
        return not standin.live()

    with capture_logs() as logs:
        await cycle_until(orch, fleet_gone, timeout=60)
    events = [e["event"] for e in logs]
    assert "worker_draining" in events and "pod_terminated" in events
    rows = await _fetch(
        pg_dsn,
        "select id, status, (metadata->>'pod_terminated')::bool as done, "
        "coalesce((metadata->>'spawn_cancelled')::bool, false) as cancelled from workers",
    )
    # drained daemons deregistered themselves ('stopped') before their pods were terminated; a pod still
    # starting when the rest had cleared the queue may have been cancelled instead (it then ran nothing)
    assert all(r["status"] == "stopped" and r["done"] for r in rows), rows
    cancelled = {r["id"] for r in rows if r["cancelled"]}
    for pod in standin.pods.values():
        assert pod.proc is not None and (pod.proc.returncode == 0 or pod.body["name"] in cancelled)
    assert standin.created_total == 3  # nothing spawned beyond the cap, nothing respawned
    done_by = {t.worker_id for t in tasks}
    assert done_by and done_by <= {r["id"] for r in rows} - cancelled


@pytest.mark.comfyui
@pytest.mark.slow
async def test_a_killed_pod_is_marked_lost_and_its_task_completes_elsewhere(store, standin, pg_dsn, pod_env):
    ids = await _enqueue(store, 4, 3.0)
    lease = {**pod_env, "LEASE_SECONDS": "5"}
    settings = replace(SETTINGS, max_workers=2, pod_env=lease)
    orch = orchestrator(store, standin, pg_dsn, settings=settings, worker_timeout_s=6.0)
    victim: dict[str, str] = {}

    async def one_running() -> bool:
        rows = await _fetch(
            pg_dsn,
            "select t.task_id, w.id, w.metadata->>'pod_id' as pod_id from tasks t "
            "join workers w on w.id = t.worker_id where t.status = 'running' limit 1",
        )
        if rows:
            victim.update(task=rows[0]["task_id"], worker=rows[0]["id"], pod=rows[0]["pod_id"])
        return bool(rows)

    await cycle_until(orch, one_running)
    standin.kill(victim["pod"])  # SIGKILL: no deregistration, no release of its task

    await cycle_until(orch, _all_complete(store, ids), timeout=100)
    task = await store.get_task(victim["task"])
    assert task.attempts >= 2 and task.worker_id != victim["worker"]

    async def victim_released() -> bool:
        rows = await _fetch(
            pg_dsn,
            "select status, (metadata->>'pod_terminated')::bool as done from workers where id = $1",
            victim["worker"],
        )
        return rows[0]["status"] == "lost" and bool(rows[0]["done"])

    await cycle_until(orch, victim_released)
    assert victim["pod"] not in {p.id for p in standin.live()}


async def test_bad_provider_answers_are_logged_and_never_multiply_pods(store, pg_dsn):
    standin = RunPodStandIn()  # pods with nothing inside: we only look at the API traffic
    await standin.start()
    now = [1000.0]
    try:
        for _ in range(5):
            await store.enqueue(NewTask("comfy", {}))
        settings = replace(SETTINGS, max_workers=2, reconcile_every=1000)
        # 401: one create attempt, a clear log, spawning paused; the next cycles do not call create again
        bad = orchestrator(store, standin, pg_dsn, key="wrong", settings=settings, clock=lambda: now[0])
        with capture_logs() as logs:
            await bad.run_once()
            await bad.run_once()
        failed = [e for e in logs if e["event"] == "pod_create_failed"]
        assert len(failed) == 1 and failed[0]["status"] == 401 and "RUNPOD_API_KEY" in failed[0]["error"]
        assert [e["spawn_blocked_s"] for e in logs if e["event"] == "orchestrator_decision"][1] > 0
        assert standin.created_total == 0 and sum(1 for m, p, _ in standin.requests if m == "POST") == 1

        # 500 on every create: a bounded number of attempts, then paused; never more pods than asked for
        standin.fail("create", 500, times=100)
        orch = orchestrator(store, standin, pg_dsn, settings=settings, clock=lambda: now[0])
        with capture_logs() as logs:
            await orch.run_once()
        assert [e["status"] for e in logs if e["event"] == "pod_create_failed"] == [500]
        assert standin.created_total == 0
        standin.faults.clear()

        # 429 with Retry-After, then a 500 after the pod was really created: exactly the pods asked for
        standin.fail("create", 429, retry_after="1")
        standin.fail("create", mode="create_then_500")
        now[0] += 10_000  # past the spawn backoff
        d = await orch.run_once()
        assert d.spawn == 2 and standin.created_total == 2 and len(standin.live()) == 2
        rows = await _fetch(pg_dsn, "select metadata->>'pod_id' as pod_id from workers where status = 'starting'")
        assert sorted(r["pod_id"] for r in rows) == sorted(p.id for p in standin.live())

        # malformed JSON from the pod list: the sweep is skipped with a log, nobody is marked lost
        standin.fail("list", mode="malformed", times=10)
        with capture_logs() as logs:
            result = await orch.reconcile()
        assert result == {"orphans_terminated": [], "adopted": [], "marked_lost": []}
        assert any(e["event"] == "reconcile_skipped" for e in logs)
        assert orch.spawn_failures == 0 and (await orch.run_once()).spawn == 0  # capacity already starting
        await bad.provider.close()
        await orch.provider.close()
    finally:
        await standin.stop()


class _PodRegistersDuringTheCycle(PostgresStore):
    """The real store, with one spawned pod's daemon registering right after the orchestrator read the fleet
    (the race a cancel must lose without harm)."""

    racer: str | None = None

    async def orchestrator_fleet(self) -> dict:
        raw = await super().orchestrator_fleet()
        if self.racer:
            await self.register_worker(WorkerInfo(self.racer, "pod", 1, "test", ("comfy",)))
            self.racer = None
        return raw


async def test_spawns_the_backlog_no_longer_needs_are_cancelled_but_one_that_registered_is_kept(pg_dsn):
    standin = RunPodStandIn()  # pods with nothing inside: they never register by themselves
    await standin.start()
    store = _PodRegistersDuringTheCycle(pg_dsn, listen=False)
    await store.connect()
    try:
        for _ in range(3):
            await store.enqueue(NewTask("comfy", {}))
        orch = orchestrator(store, standin, pg_dsn, settings=replace(SETTINGS, reconcile_every=1000))
        assert (await orch.run_once()).spawn == 3 and len(standin.live()) == 3
        spawned = [r["id"] for r in await _fetch(pg_dsn, "select id from workers where status = 'starting'")]

        # a worker started by hand comes up: it alone clears 3 x 60 s within one spawn delay (180 s) + 30 s
        await store.register_worker(WorkerInfo("by-hand", "host", 1, "test", ("comfy",)))
        store.racer = spawned[0]
        with capture_logs() as logs:
            d = await orch.run_once()
        assert sorted(a.worker_id for a in d.cancel) == sorted(spawned)
        skipped = [e["worker_id"] for e in logs if e["event"] == "spawn_cancel_skipped"]
        cancelled = sorted(e["worker_id"] for e in logs if e["event"] == "spawn_cancelled")
        assert skipped == [spawned[0]] and cancelled == sorted(spawned[1:])

        rows = {
            r["id"]: r
            for r in await _fetch(
                pg_dsn,
                "select id, status, metadata->>'pod_id' as pod_id, (metadata->>'pod_terminated')::bool as done, "
                "(metadata->>'spawn_cancelled')::bool as cancelled from workers",
            )
        }
        racer = rows[spawned[0]]
        assert racer["status"] == "idle" and not racer["done"] and not racer["cancelled"]
        assert [p.id for p in standin.live()] == [racer["pod_id"]]  # the registered pod keeps running
        for wid in spawned[1:]:
            assert rows[wid]["status"] == "stopped" and rows[wid]["done"] and rows[wid]["cancelled"]
        await orch.provider.close()
    finally:
        await store.close()
        await standin.stop()
