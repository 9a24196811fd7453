"""Process-level faults: ComfyUI killed under the daemon, and the worker itself stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.daemon import Daemon
from comfy_worker.models import TaskStatus, WorkerInfo
from tests.comfy_server import comfy_args, comfy_test_paths, free_port
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import FAST, Harness, wait_task

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[3]


async def wait_progress(harness: Harness, task_id: str, timeout: float = 60) -> None:
    """Until ComfyUI has reported progress for the task (it is really executing)."""
    await wait_task(harness.store, task_id, statuses=("running",), timeout=timeout)
    for _ in range(int(timeout * 10)):
        if (await harness.store.get_task(task_id)).progress:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no progress reported")


async def worker_process(harness: Harness, worker_id: str, **env: str) -> asyncio.subprocess.Process:
    """``python -m comfy_worker --worker-id <id>`` as its own process on the harness's queue and ComfyUI."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfy_worker",
        "--worker-id",
        worker_id,
        env={
            **os.environ,
            **FAST,
            "DATABASE_URL": harness.dsn,
            "COMFY_URL": harness.comfy_url,
            "LOCAL_STORAGE_DIR": str(harness.storage_dir),
            "PYTHONPATH": str(REPO),
            **env,
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_comfyui_killed_mid_task_is_restarted_and_the_task_retried(harness: Harness) -> None:
    python, tree = comfy_test_paths()
    workdir = Path(tempfile.mkdtemp(prefix="cw-supervised-"))
    settings = harness.settings(
        COMFY_URL="",
        COMFY_PATH=str(tree),
        COMFY_PYTHON=str(python),
        COMFY_PORT=str(free_port()),
        COMFY_ARGS=shlex.join(comfy_args(workdir)),
    )
    daemon = await harness.start_daemon("comfy-worker-supervised", settings=settings)
    first_pid = daemon.supervisor.pid
    assert first_pid is not None
    tid = await harness.submit(wf.slow(4))
    await wait_progress(harness, tid)
    os.kill(first_pid, signal.SIGKILL)
    # while ComfyUI restarts, the worker's heartbeat says it is unhealthy (the orchestrator and humans see it)
    health_seen: list[bool] = []
    for _ in range(600):
        snap = await harness.store.fleet_snapshot()
        row = next(w for w in snap["workers"] if w["id"] == "comfy-worker-supervised")
        health = row["metadata"].get("healthy")
        if not health_seen or health_seen[-1] != health:
            health_seen.append(health)
        if health_seen[-2:] == [False, True]:
            break
        await asyncio.sleep(0.1)
    assert False in health_seen and health_seen[-1] is True, health_seen
    task = await wait_task(harness.store, tid, timeout=120)
    assert task.status is TaskStatus.COMPLETE, task.error
    assert task.attempts == 2, "the interrupted attempt counts and the retry completes"
    assert daemon.supervisor.pid not in (None, first_pid)
    assert daemon.supervisor.restarts >= 1


async def test_sigterm_mid_task_releases_it_and_another_worker_finishes(harness: Harness) -> None:
    proc = await worker_process(harness, "comfy-worker-doomed", SHUTDOWN_GRACE_S="1")
    try:
        tid = await harness.submit(wf.slow(6))
        await wait_progress(harness, tid)
        assert (await harness.store.get_task(tid)).worker_id == "comfy-worker-doomed"
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-3000:]
        released = await harness.store.get_task(tid)
        assert released.status is TaskStatus.QUEUED and released.attempts == 0, "released without spending"
        snap = await harness.store.fleet_snapshot()
        assert next(w for w in snap["workers"] if w["id"] == "comfy-worker-doomed")["status"] == "stopped"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await harness.start_daemon("comfy-worker-rescuer")
    task = await wait_task(harness.store, tid, timeout=60)
    assert task.status is TaskStatus.COMPLETE and task.attempts == 1
    assert task.worker_id == "comfy-worker-rescuer"


async def test_a_heartbeat_in_flight_at_shutdown_does_not_mark_the_stopped_worker_idle(harness: Harness) -> None:
    """Seen in CI: a heartbeat sent just before the worker deregistered committed just after it, and the row of a
    worker that had exited said ``idle``. Here the daemon's heartbeat is held until the worker deregisters, then
    written from outside the daemon (a query already on the wire outlives the task that sent it). Deregistering
    must wait for a heartbeat in flight, so that "stopped" is the last word."""
    worker_id = "comfy-worker-hb-race"
    in_flight, deregistered = asyncio.Event(), asyncio.Event()
    late: list[asyncio.Future[Any]] = []

    def hold_heartbeats(daemon: Daemon) -> None:
        real_deregister = daemon.store.deregister_worker

        async def heartbeat(*args: Any, **kw: Any) -> Any:
            async def on_the_wire() -> Any:
                in_flight.set()
                with contextlib.suppress(TimeoutError):  # with the fix, deregistering waits for us instead
                    await asyncio.wait_for(deregistered.wait(), 2)
                return await harness.store.heartbeat(*args, **kw)

            late.append(asyncio.ensure_future(on_the_wire()))
            return await asyncio.shield(late[-1])

        async def deregister(*args: Any, **kw: Any) -> Any:
            result = await real_deregister(*args, **kw)
            deregistered.set()
            return result

        daemon.store.heartbeat = heartbeat  # type: ignore[method-assign]
        daemon.store.deregister_worker = deregister  # type: ignore[method-assign]

    daemon = await harness.start_daemon(worker_id, before_start=hold_heartbeats)
    await asyncio.wait_for(in_flight.wait(), 30)
    daemon.request_stop("test")
    await asyncio.wait_for(harness.daemons[-1][1], 60)
    await asyncio.wait_for(asyncio.gather(*late, return_exceptions=True), 10)
    snap = await harness.store.fleet_snapshot()
    assert next(w for w in snap["workers"] if w["id"] == worker_id)["status"] == "stopped"


async def test_a_second_worker_under_an_id_live_on_another_host_refuses_to_start(harness: Harness) -> None:
    twin = "comfy-worker-twin"
    await harness.store.register_worker(WorkerInfo(twin, "another-box", 4242, "test", ("comfy",)))
    tid = await harness.submit(wf.slow(1))
    [held] = await harness.store.claim(twin, ["comfy"], 1, 60)
    proc = await worker_process(harness, twin)
    _out, err = await asyncio.wait_for(proc.communicate(), 90)
    last = err.decode().strip().splitlines()[-1]
    assert proc.returncode == 1, err.decode()[-3000:]
    assert last.startswith("comfy-worker: error:") and f"worker id '{twin}' is in use by host another-box" in last
    assert "WORKER_ID" in last
    task = await harness.store.get_task(tid)
    assert held.task_id == tid and task.status is TaskStatus.RUNNING and task.worker_id == twin  # untouched
