"""A dead or stopped worker daemon, on a real Postgres queue with the real ComfyUI.

* ``kill -9`` of a ``python -m comfy_worker`` process mid-task: another daemon runs the task within seconds,
  though the lease is a minute (the dead process's presence lock freed when the kernel closed its socket).
* SIGSTOP then SIGCONT of a daemon holding tasks: the other daemon runs them once their leases run out; the
  stopped one, continued, is told it lost them and records nothing: every task completes exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

import pytest

from comfy_worker.models import TaskStatus
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.test_daemon_processes import wait_progress, worker_process

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


async def _claimed_by(harness: Harness, task_id: str, worker_id: str, timeout: float) -> float:
    """Seconds until ``worker_id`` holds the task (polling the row every 50 ms)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while loop.time() - t0 < timeout:
        task = await harness.store.get_task(task_id)
        if task.status is TaskStatus.RUNNING and task.worker_id == worker_id:
            return loop.time() - t0
        await asyncio.sleep(0.05)
    raise AssertionError(f"{worker_id} did not claim {task_id} within {timeout} s")


async def test_a_killed_daemon_s_task_runs_elsewhere_within_seconds_not_at_lease_expiry(harness: Harness) -> None:
    victim = await worker_process(harness, "comfy-worker-victim", LEASE_SECONDS="60", HEARTBEAT_INTERVAL="1",
                                  STALE_CHECK_INTERVAL="2")
    try:
        tid = await harness.submit(wf.slow(3))
        await wait_progress(harness, tid)
        assert (await harness.store.get_task(tid)).worker_id == "comfy-worker-victim"
        # started once the victim holds the task (so it cannot take it first), running as by default
        await harness.start_daemon("comfy-worker-rescuer", harness.settings(LEASE_SECONDS="60",
                                                                            STALE_CHECK_INTERVAL="2"))
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        took = await _claimed_by(harness, tid, "comfy-worker-rescuer", timeout=50)
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    # stale check every 2 s + the 2 s grace, far inside the 60 s lease
    assert took < 10, f"the task came back {took:.1f} s after the kill"
    task = await wait_task(harness.store, tid, timeout=90)
    assert task.status is TaskStatus.COMPLETE and task.attempts == 2, task.error
    assert task.worker_id == "comfy-worker-rescuer" and task.result is not None


async def _read_events(stream: asyncio.StreamReader, events: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))


async def test_a_stopped_daemon_loses_its_leases_and_continued_records_nothing(harness: Harness) -> None:
    victim = await worker_process(harness, "comfy-worker-sleepy", LEASE_SECONDS="3", HEARTBEAT_INTERVAL="0.5")
    assert victim.stderr is not None
    events: list[dict[str, Any]] = []
    reader = asyncio.create_task(_read_events(victim.stderr, events))
    ids = [await harness.submit(wf.slow(1.5)) for _ in range(4)]
    try:
        await wait_progress(harness, ids[0])
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            held = {t.task_id for t in [await harness.store.get_task(i) for i in ids]
                    if t.worker_id == "comfy-worker-sleepy" and t.status is TaskStatus.RUNNING}
            assert ids[0] in held
            await harness.start_daemon("comfy-worker-rescuer")
            for tid in ids:
                done = await wait_task(harness.store, tid, timeout=120)
                assert done.status is TaskStatus.COMPLETE, done.error
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:  # the continued worker hears of it (heartbeat or rejected report)
            told = {e.get("task_id") for e in events if e.get("event") in ("task_abandoned", "report_rejected")}
            if held <= told:
                break
            await asyncio.sleep(0.1)
        assert held <= told, (held, [e for e in events if e.get("task_id") in held])
        victim.send_signal(signal.SIGTERM)
        await asyncio.wait_for(victim.wait(), 60)
        await asyncio.wait_for(reader, 10)
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    completed_by_victim = [e for e in events if e.get("event") == "task_complete"]
    assert completed_by_victim == [], completed_by_victim
    for tid in ids:  # every task: complete, once, by the rescuer; the stopped worker's ones took a second attempt
        task = await harness.store.get_task(tid)
        assert task.status is TaskStatus.COMPLETE and task.worker_id == "comfy-worker-rescuer", (tid, task.worker_id)
        assert task.attempts == (2 if tid in held else 1), (tid, task.attempts)
