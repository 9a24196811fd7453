"""The two runners of a batch (see :class:`~comfy_worker.explore.batch.Runner`).

* :class:`LocalRunner` — one ComfyUI (``--server URL``), one run at a time, outputs streamed from ``/view``.
  Before a prompt is queued the journal records the prompt id it asks for; after, the id ComfyUI gave. A
  resumed batch asks ComfyUI about a run in flight (history, then queue) and waits for it instead of queueing
  it again. (A server older than client-chosen prompt ids leaves one gap: a kill between ComfyUI accepting
  the prompt and the journal write, about a millisecond, would queue that run again.)
* :class:`FleetRunner` — every run a ``comfy`` task with a task id and ``dedupe_key`` derived from the batch
  and the run, so submitting again (a resumed batch) returns the same task instead of a second one. The batch
  waits on the tasks' rows and downloads each result's outputs from storage.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from comfy_worker.engine import ComfyClient, events
from comfy_worker.engine.history import finished, outcome
from comfy_worker.errors import (
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionTimeout,
    StorageError,
    WorkflowInvalid,
)
from comfy_worker.explore.bar import Bar
from comfy_worker.explore.batch import DONE, FAILED, Journal, RunJob, RunOutcome
from comfy_worker.explore.fs import move_into
from comfy_worker.models import NewTask, Task, TaskStatus
from comfy_worker.storage import Storage
from comfy_worker.store import TaskStore

T = TypeVar("T")
PROMPT_NAMESPACE = uuid.UUID("1c0f4f53-6a51-4f0e-8a8e-7b4e2a1f9d27")
RUN_FAILURES = (WorkflowInvalid, ExecutionFailed, ExecutionInterrupted, ExecutionTimeout)


def with_marker(workflow: dict[str, Any], marker: str) -> dict[str, Any]:
    """A copy of the workflow whose first node's ``_meta`` names the run (ComfyUI keeps it in history)."""
    wf = copy.deepcopy(workflow)
    first = next(iter(wf.values()))
    first["_meta"] = {**(first.get("_meta") or {}), "explore_run": marker}
    return wf


async def durably(coro: Awaitable[T]) -> T:
    """Finish ``coro`` even when the caller is cancelled meanwhile (Ctrl-C), then let the cancellation through:
    for the few steps whose effect must be written down before we stop (queue a prompt, record its id)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def in_flight(journal: Journal, *statuses: str) -> list[dict[str, Any]]:
    return [r for r in journal.state["runs"].values() if r.get("status") in statuses]


class LocalRunner:
    mode = "local"

    def __init__(self, server: str, *, timeout_s: float = 3600.0, stall_s: float = 600.0) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self.stall_s = stall_s

    def in_flight_note(self, journal: Journal) -> str | None:
        busy = in_flight(journal, "submitting", "running")
        if not busy:
            return None
        names = ", ".join(f"{r['name']} (prompt {r.get('prompt_id') or r.get('requested_prompt_id')})" for r in busy)
        return f"still rendering in ComfyUI: {names}; resuming collects it without queueing it again"

    async def execute(self, jobs: list[RunJob], journal: Journal, bar: Bar) -> AsyncIterator[RunOutcome]:
        async with ComfyClient(self.server) as client:
            for job in jobs:
                run_id = job.run.run_id
                t0 = time.monotonic()
                bar.note(job.run.name)
                try:
                    history = await self._run_one(client, job, journal, bar)
                    tmp = job.dest / ".download"
                    items = await client.download_outputs(history, tmp)
                    files = move_into([i.path for i in items], job.dest)
                    shutil.rmtree(tmp, ignore_errors=True)
                except RUN_FAILURES as exc:
                    yield RunOutcome(run_id, FAILED, time.monotonic() - t0, error=str(exc),
                                     handle={"prompt_id": journal.run(run_id).get("prompt_id")})
                    continue
                yield RunOutcome(run_id, DONE, time.monotonic() - t0, files, handle={"prompt_id": history.prompt_id})

    async def _run_one(self, client: ComfyClient, job: RunJob, journal: Journal, bar: Bar) -> Any:
        run_id = job.run.run_id
        entry = journal.run(run_id)
        pid = None
        if entry.get("status") in ("submitting", "running"):
            for candidate in (entry.get("prompt_id"), entry.get("requested_prompt_id")):
                if candidate:
                    hist = await client.history(candidate)
                    if hist is not None and finished(hist):
                        return outcome(hist)
                    running, pending = await client.queue()
                    if candidate in running or candidate in pending:
                        pid = candidate
                        journal.update(run_id, status="running", prompt_id=pid)
                        break
        if pid is None:
            requested = str(uuid.uuid5(PROMPT_NAMESPACE, f"{job.marker}:{entry.get('attempt', 1)}"))
            workflow = with_marker(job.workflow, job.marker)

            async def submit() -> str:
                journal.update(run_id, status="submitting", requested_prompt_id=requested, prompt_id=None)
                got = await client.queue_prompt(workflow, prompt_id=requested)
                journal.update(run_id, status="running", prompt_id=got)
                return got

            pid = await durably(submit())

        def on_event(event: events.Event) -> None:
            if isinstance(event, events.Progress) and event.max:
                bar.note(f"{job.run.name}: node {event.node} {event.value}/{event.max}")
            elif isinstance(event, events.Executing) and event.node is not None:
                bar.note(f"{job.run.name}: node {event.node}")

        return await client.wait(pid, on_event=on_event, deadline_s=self.timeout_s, stall_s=self.stall_s)


def _seconds(task: Task) -> float | None:
    if task.started_at and task.completed_at:
        return round((task.completed_at - task.started_at).total_seconds(), 3)
    return None


class FleetRunner:
    mode = "fleet"

    def __init__(self, store: TaskStore, storage: Storage, *, priority: int = 0, max_attempts: int = 3,
                 poll_s: float | None = None) -> None:
        self.store = store
        self.storage = storage
        self.priority = priority
        self.max_attempts = max_attempts
        self.poll_s = poll_s

    def in_flight_note(self, journal: Journal) -> str | None:
        busy = in_flight(journal, "submitted")
        if not busy:
            return None
        return (f"{len(busy)} task(s) stay in the queue and keep running on the fleet; resuming collects them "
                "(cancel with `comfy-worker cancel TASK_ID`)")

    @staticmethod
    def task_id(job: RunJob, attempt: int) -> str:
        return f"explore-{job.batch_id}-{job.run.run_id:05d}-a{attempt}"

    @staticmethod
    def dedupe_key(job: RunJob) -> str:
        values = json.dumps(job.run.values, sort_keys=True, default=str)
        digest = hashlib.sha256(values.encode()).hexdigest()[:16]
        return f"explore:{job.batch_id}:{job.run.run_id}:{digest}"

    async def execute(self, jobs: list[RunJob], journal: Journal, bar: Bar) -> AsyncIterator[RunOutcome]:
        pending: dict[str, RunJob] = {}
        for i, job in enumerate(jobs):
            run_id = job.run.run_id
            entry = journal.run(run_id)
            task_id = entry.get("task_id") or self.task_id(job, int(entry.get("attempt", 1)))

            async def submit(job: RunJob = job, run_id: int = run_id, task_id: str = task_id) -> Task:
                journal.update(run_id, status="submitted", task_id=task_id,
                               submitted_at=datetime.now(UTC).isoformat(timespec="seconds"))
                task = await self.store.enqueue(NewTask(
                    "comfy", {"workflow": with_marker(job.workflow, job.marker)}, task_id=task_id,
                    priority=self.priority, max_attempts=self.max_attempts, dedupe_key=self.dedupe_key(job)))
                if task.task_id != task_id:  # the dedupe key found this run's task under another id
                    journal.update(run_id, task_id=task.task_id)
                return task

            task = await durably(submit())
            pending[task.task_id] = job
            bar.note(f"submitted {i + 1}/{len(jobs)}")
        while pending:
            counts = {"queued": 0, "running": 0}
            for task_id, job in list(pending.items()):
                task = await self.store.get_task(task_id)
                if not task.status.terminal:
                    counts[str(task.status)] = counts.get(str(task.status), 0) + 1
                    continue
                del pending[task_id]
                yield await self._outcome(task, job)
            bar.note(f"{counts['running']} running, {counts['queued']} queued on the fleet")
            if pending:
                await asyncio.sleep(self.poll_s or min(2.0, 0.2 + 0.005 * len(pending)))

    async def _outcome(self, task: Task, job: RunJob) -> RunOutcome:
        handle: dict[str, Any] = {"task_id": task.task_id, "worker_id": task.worker_id}
        if task.status is not TaskStatus.COMPLETE:
            return RunOutcome(job.run.run_id, FAILED, _seconds(task), error=f"{task.status}: {task.error}",
                              handle=handle)
        result = task.result or {}
        handle["prompt_id"] = result.get("prompt_id")
        tmp = job.dest / ".download"
        files: list[Path] = []
        try:
            for out in result.get("outputs") or []:
                files.append(await self.storage.download(out["storage_path"], tmp / Path(out["filename"]).name))
        except StorageError as exc:
            if exc.retryable:  # the task is done; a resumed batch downloads its outputs again
                raise
            return RunOutcome(job.run.run_id, FAILED, _seconds(task), error=f"outputs not downloadable: {exc}",
                              handle=handle)
        moved = move_into(files, job.dest)
        shutil.rmtree(tmp, ignore_errors=True)
        return RunOutcome(job.run.run_id, DONE, _seconds(task), moved, handle=handle)
