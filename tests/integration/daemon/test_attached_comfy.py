"""An attached ComfyUI (COMFY_URL: a server the worker did not start) dying mid-task, on a real Postgres queue with
the real test ComfyUI as a process of its own and ``python -m comfy_worker`` as another.

* ``kill -9`` of that ComfyUI while a slow prompt runs: the task fails saying ComfyUI went away (not a stall, not a
  timeout), retryable with its attempt spent (as when a supervised child dies); the worker row says unhealthy, and
  nothing is claimed while ComfyUI is down, though tasks are due; ComfyUI started again on the same port is found
  again (``comfy_reachable``) and both tasks complete there.
* A prompt that makes no progress on a live attached ComfyUI is still a stall.
* A worker attached to a port where no ComfyUI answers yet (past COMFY_STARTUP_TIMEOUT) starts and registers
  anyway (unhealthy), finds ComfyUI when it comes up, sees it die again before any task ran, claims nothing
  while it is down, and runs the queued task once it is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.models import TaskStatus
from tests.comfy_server import free_port, start_test_comfyui, stop_test_comfyui
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.test_daemon_processes import wait_progress, worker_process

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
WORKER = "comfy-worker-attached"


async def _read_events(stream: asyncio.StreamReader, events: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))


async def _until(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll ``check`` (sync or async) every 50 ms until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def _count(events: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in events if e.get("event") == name)


async def _worker_row(harness: Harness) -> dict[str, Any]:
    snap = await harness.store.fleet_snapshot()
    return next(w for w in snap["workers"] if w["id"] == WORKER)


async def test_an_attached_comfyui_killed_mid_task_fails_it_as_gone_and_claims_wait_for_its_return(
    harness: Harness, tmp_path: Path
) -> None:
    port, workdir = free_port(), tmp_path / "comfy"
    comfy, url = await asyncio.to_thread(start_test_comfyui, port, workdir=workdir)
    worker = await worker_process(harness, WORKER, COMFY_URL=url, WORK_DIR=str(tmp_path / "work"))
    assert worker.stderr is not None
    events: list[dict[str, Any]] = []
    reader = asyncio.create_task(_read_events(worker.stderr, events))
    revived = None
    try:
        first = await harness.submit(wf.slow(8))
        await wait_progress(harness, first)  # its prompt really runs in ComfyUI
        os.kill(comfy.pid, signal.SIGKILL)
        await asyncio.to_thread(comfy.wait, 10)

        # well inside the client's 15 s websocket reconnect grace: the task ends because ComfyUI was found gone
        failed = await _until("the task's failure", lambda: _failed_once(harness, first), timeout=10)
        assert failed.error.startswith(f"ComfyUI at {url} went away (connection refused) while running prompt "), (
            failed.error)
        assert "no progress" not in failed.error and "deadline" not in failed.error
        details = failed.error_details or {}
        assert details["error_type"] == "EngineGone" and details["engine"] == "comfyui" and details["url"] == url
        assert details["reason"] == "connection refused" and details["prompt_id"] in failed.error
        # the child-crash rule: retryable, the attempt spent, back in the queue with backoff
        assert failed.status is TaskStatus.QUEUED and failed.attempts == 1 and details["retryable"] is True
        assert _count(events, "comfy_unreachable") == 1
        gone = next(e for e in events if e.get("event") == "comfy_unreachable")
        assert gone["url"] == url and gone["reason"] == "connection refused"

        # its heartbeat says it is unhealthy, and why
        row = await _until("an unhealthy worker row",
                           lambda: _row_if(harness, lambda r: r["metadata"].get("healthy") is False))
        comfy_health = row["metadata"]["engines"]["comfyui"]
        assert comfy_health["state"] == "unreachable" and comfy_health["error"] == "went away (connection refused)"

        # nothing is claimed while ComfyUI is down: a new task, and the failed one once its backoff ran out
        second = await harness.submit(wf.slow(0.5))
        await _until("the retry to fall due", lambda: _due(harness, first), timeout=30)
        passes = _count(events, "waiting_for_engines")
        await _until("two more claim passes", lambda: _count(events, "waiting_for_engines") >= passes + 2)
        for tid, attempts in ((first, 1), (second, 0)):
            task = await harness.store.get_task(tid)
            assert task.status is TaskStatus.QUEUED and task.attempts == attempts and task.worker_id is None, (
                tid, task.status, task.attempts)

        revived, _ = await asyncio.to_thread(start_test_comfyui, port, workdir=workdir)  # the same port
        await _until("comfy_reachable", lambda: _count(events, "comfy_reachable") == 1)
        back = next(e for e in events if e.get("event") == "comfy_reachable")
        assert back["url"] == url and back["down_s"] > 0
        for tid, attempts in ((second, 1), (first, 2)):
            done = await wait_task(harness.store, tid, timeout=120)
            assert done.status is TaskStatus.COMPLETE and done.attempts == attempts, (tid, done.error)
            assert done.worker_id == WORKER
        await _until("a healthy worker row", lambda: _row_if(harness, lambda r: r["metadata"].get("healthy")))

        names = [e.get("event") for e in events]
        down, up = names.index("comfy_unreachable"), names.index("comfy_reachable")
        assert "task_claimed" not in names[down:up], [e for e in events[down:up] if e.get("event") == "task_claimed"]
        assert "comfy_unreachable" not in names[up:]  # back for good
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 60) == 0
        await asyncio.wait_for(reader, 10)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        reader.cancel()
        for proc in (comfy, revived):
            if proc is not None:
                await asyncio.to_thread(stop_test_comfyui, proc)


async def _failed_once(harness: Harness, task_id: str) -> Any:
    task = await harness.store.get_task(task_id)
    return task if task.error else None


async def _due(harness: Harness, task_id: str) -> bool:
    task = await harness.store.get_task(task_id)
    return task.run_at is not None and task.run_at <= datetime.now(UTC)


async def _row_if(harness: Harness, ok: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    row = await _worker_row(harness)
    return row if ok(row) else None


async def test_a_prompt_without_progress_on_a_live_attached_comfyui_is_a_stall(harness: Harness) -> None:
    daemon = await harness.start_daemon()
    assert daemon.supervisor.attached
    one_long_step = {"1": {"class_type": "CWSlow", "inputs": {"seconds": 30.0, "steps": 1}},
                     "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": wf.tag()}}}
    tid = await harness.submit(one_long_step, stall_timeout_s=2, max_attempts=1)
    task = await wait_task(harness.store, tid, timeout=60)
    assert task.status is TaskStatus.FAILED and "made no progress for 2 s" in (task.error or ""), task.error
    assert (task.error_details or {})["error_type"] == "ExecutionTimeout" and "went away" not in task.error
    comfy = daemon.host.comfy
    assert comfy is not None and comfy.health()["state"] == "ready" and getattr(comfy, "gone", None) is None


async def test_a_worker_attached_before_its_comfyui_answers_claims_once_it_does(
    harness: Harness, tmp_path: Path
) -> None:
    port, workdir = free_port(), tmp_path / "comfy"  # nothing listens on the port yet
    url = f"http://127.0.0.1:{port}"
    daemon = await harness.start_daemon("comfy-worker-early", settings=harness.settings(
        COMFY_URL=url, COMFY_STARTUP_TIMEOUT="1"))  # fmt: skip
    procs: list[Any] = []
    try:
        comfy = daemon.host.comfy
        assert comfy is not None and comfy.health()["state"] == "unreachable"
        assert comfy.health()["error"] == "not answering yet (connection refused)"
        row = await _until("an unhealthy worker row", lambda: _row_of(harness, "comfy-worker-early"))
        assert row["metadata"]["engines"]["comfyui"]["state"] == "unreachable"

        # it comes up: found; it dies before any task ran: seen (its websocket was opened when it came up)
        procs.append((await asyncio.to_thread(start_test_comfyui, port, workdir=workdir))[0])
        await _until("ComfyUI found", lambda: comfy.health()["state"] == "ready", timeout=30)
        os.kill(procs[-1].pid, signal.SIGKILL)
        await asyncio.to_thread(procs[-1].wait, 10)
        await _until("ComfyUI seen gone", lambda: comfy.health()["state"] == "unreachable", timeout=15)
        assert comfy.health()["error"] == "went away (connection refused)"

        tid = await harness.submit(wf.slow(0.5))
        passes = daemon.host.claimable_types()
        task = await harness.store.get_task(tid)
        assert passes == [] and task.status is TaskStatus.QUEUED and task.attempts == 0  # not claimed to fail
        procs.append((await asyncio.to_thread(start_test_comfyui, port, workdir=workdir))[0])
        done = await wait_task(harness.store, tid, timeout=120)
        assert done.status is TaskStatus.COMPLETE and done.attempts == 1, done.error
        assert done.worker_id == "comfy-worker-early"
        assert comfy.health()["state"] == "ready" and comfy.metadata().get("gpu")  # read once it answered
    finally:
        await harness.stop_all()
        for proc in procs:
            await asyncio.to_thread(stop_test_comfyui, proc)


async def _row_of(harness: Harness, worker_id: str) -> dict[str, Any] | None:
    snap = await harness.store.fleet_snapshot()
    row = next((w for w in snap["workers"] if w["id"] == worker_id), None)
    return row if row is not None and row["metadata"].get("healthy") is False else None
