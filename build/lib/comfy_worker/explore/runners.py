"""The two runners of a batch (see :class:`~comfy_worker.explore.batch.Runner`).

* :class:`LocalRunner` — one ComfyUI (``--server URL``), runs in order, the next prompt queued behind the one
  rendering; outputs streamed from ``/view``. Before a prompt is queued the journal records the prompt id it
  asks for, and the prompt carries a tag in its first node's ``_meta``; after, the journal records the id
  ComfyUI gave. A resumed batch asks ComfyUI about a run in flight (history, then queue; by the tag when the
  process died while queueing, for servers that ignore client-chosen ids) and waits for it instead of
  queueing it again.
* :class:`FleetRunner` — every run a ``comfy`` task with a task id and ``dedupe_key`` derived from the batch
  and the run, so submitting again (a resumed batch) returns the same task instead of a second one. The batch
  waits on the tasks' rows and downloads each result's outputs from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import shutil
import time
import uuid
from collections import deque
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
MARKER_KEY = "explore_run"
PROMPT_NAMESPACE = uuid.UUID("1c0f4f53-6a51-4f0e-8a8e-7b4e2a1f9d27")
SWEEP_S = 5.0
RUN_FAILURES = (WorkflowInvalid, ExecutionFailed, ExecutionInterrupted, ExecutionTimeout)


def with_marker(workflow: dict[str, Any], tag: str) -> dict[str, Any]:
    """A copy of the workflow whose first node's ``_meta`` names the run and attempt (``<batch>:<run>:<attempt>``;
    ComfyUI keeps ``_meta`` in its queue and history and otherwise ignores it)."""
    wf = copy.deepcopy(workflow)
    first = next(iter(wf.values()))
    first["_meta"] = {**(first.get("_meta") or {}), MARKER_KEY: tag}
    return wf


async def durably(coro: Awaitable[T]) -> T:
    """Finish ``coro`` even when the caller is cancelled meanwhile (Ctrl-C), then let the cancellation through:
    for the few steps whose effect must be written down before we stop (queue a prompt, record its id)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # whatever it did is in the journal; the cancellation wins
            await task
        raise


def in_flight(journal: Journal, *statuses: str) -> list[dict[str, Any]]:
    return [r for r in journal.state["runs"].values() if r.get("status") in statuses]


class LocalRunner:
    """One ComfyUI, runs in order. The next run's prompt is queued behind the one rendering (``depth`` prompts
    in ComfyUI at most), so ComfyUI does not sit idle while outputs download and the batch records them."""

    mode = "local"

    def __init__(self, server: str, *, timeout_s: float = 3600.0, stall_s: float = 600.0, depth: int = 2) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self.stall_s = stall_s
        self.depth = max(1, depth)

    def in_flight_note(self, journal: Journal) -> str | None:
        busy = in_flight(journal, "submitting", "running")
        if not busy:
            return None
        names = ", ".join(f"{r['name']} (prompt {r.get('prompt_id') or r.get('requested_prompt_id')})" for r in busy)
        return f"still in ComfyUI's queue: {names}; resuming collects them without queueing them again"

    async def execute(self, jobs: list[RunJob], journal: Journal, bar: Bar) -> AsyncIterator[RunOutcome]:
        if not jobs:
            return
        # one client id per batch: a resumed batch gets the websocket events of prompts its predecessor queued
        async with ComfyClient(self.server, client_id=f"explore-{jobs[0].batch_id}") as client:
            todo = iter(jobs)
            queued: deque[tuple[RunJob, Any]] = deque()  # (job, History | prompt id | exception), in order

            async def queue_next() -> bool:
                job = next(todo, None)
                if job is None:
                    return False
                try:
                    handle: Any = await self._start(client, job, journal)
                except RUN_FAILURES as exc:
                    handle = exc
                queued.append((job, handle))
                return True

            while queued or await queue_next():
                while len(queued) < self.depth and await queue_next():
                    pass
                job, handle = queued.popleft()
                yield await self._finish(client, job, handle, journal, bar)

    async def _start(self, client: ComfyClient, job: RunJob, journal: Journal) -> Any:
        """The run's prompt in ComfyUI: reattached if the journal says it is there already, else queued.
        Returns its History when it already ended, else its prompt id."""
        run_id = job.run.run_id
        entry = journal.run(run_id)
        tag = f"{job.marker}:{entry.get('attempt', 1)}"
        if entry.get("status") in ("submitting", "running"):
            candidates = [c for c in (entry.get("prompt_id"), entry.get("requested_prompt_id")) if c]
            if not entry.get("prompt_id"):  # killed while queueing: ask ComfyUI for the tagged prompt
                candidates += await client.find_tagged(MARKER_KEY, tag)
            for candidate in candidates:
                hist = await client.history(candidate)
                if hist is not None and finished(hist):
                    journal.update(run_id, status="running", prompt_id=candidate)
                    return outcome(hist)
                running, pending = await client.queue()
                if candidate in running or candidate in pending:
                    journal.update(run_id, status="running", prompt_id=candidate)
                    return candidate
        requested = str(uuid.uuid5(PROMPT_NAMESPACE, tag))
        workflow = with_marker(job.workflow, tag)

        async def submit() -> str:
            journal.update(run_id, status="submitting", requested_prompt_id=requested, prompt_id=None)
            got = await client.queue_prompt(workflow, prompt_id=requested)
            journal.update(run_id, status="running", prompt_id=got)
            return got

        return await durably(submit())

    async def _finish(self, client: ComfyClient, job: RunJob, handle: Any, journal: Journal,
                      bar: Bar) -> RunOutcome:
        run_id = job.run.run_id
        t0 = time.monotonic()
        started: list[float] = []

        def on_event(event: events.Event) -> None:
            if not started and isinstance(event, events.ExecutionStart | events.Executing | events.Progress):
                started.append(time.monotonic())
            if isinstance(event, events.Progress) and event.max:
                bar.note(f"{job.run.name}: node {event.node} {event.value}/{event.max}")
            elif isinstance(event, events.Executing) and event.node is not None:
                bar.note(f"{job.run.name}: node {event.node}")

        bar.note(job.run.name)
        try:
            if isinstance(handle, BaseException):
                raise handle
            history = handle if not isinstance(handle, str) else await client.wait(
                handle, on_event=on_event, deadline_s=self.timeout_s, stall_s=self.stall_s)
            seconds = time.monotonic() - (started[0] if started else t0)
            tmp = job.dest / ".download"
            items = await client.download_outputs(history, tmp)
            files = move_into([i.path for i in items], job.dest)
            shutil.rmtree(tmp, ignore_errors=True)
        except RUN_FAILURES as exc:
            return RunOutcome(run_id, FAILED, time.monotonic() - t0, error=str(exc),
                              handle={"prompt_id": journal.run(run_id).get("prompt_id")})
        return RunOutcome(run_id, DONE, round(seconds, 3), files, handle={"prompt_id": history.prompt_id})


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
        # Task ids are derived from the batch, the run and its attempt, and enqueue returns the existing task for
        # a known id: so the journal can record every submission in one write before any of them is made, and a
        # batch killed half-way through submitting submits the rest (and only the rest) when resumed.
        ids: dict[int, str] = {}
        for job in jobs:
            entry = journal.run(job.run.run_id)
            ids[job.run.run_id] = entry.get("task_id") or self.task_id(job, int(entry.get("attempt", 1)))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        journal.update_many({run_id: {"status": "submitted", "task_id": task_id, "submitted_at": now}
                             for run_id, task_id in ids.items()})
        pending: dict[str, RunJob] = {}
        for i, job in enumerate(jobs):
            run_id = job.run.run_id
            attempt = int(journal.run(run_id).get("attempt", 1))
            task = await self.store.enqueue(NewTask(
                "comfy", {"workflow": with_marker(job.workflow, f"{job.marker}:{attempt}")}, task_id=ids[run_id],
                priority=self.priority, max_attempts=self.max_attempts, dedupe_key=self.dedupe_key(job)))
            if task.task_id != ids[run_id]:  # the dedupe key found this run's task under another id
                journal.update(run_id, task_id=task.task_id)
            pending[task.task_id] = job
            bar.note(f"submitted {i + 1}/{len(jobs)}")
        status = dict.fromkeys(pending, "queued")
        swept = time.monotonic()
        while pending:
            # The fleet claims our tasks in the order we queued them, so only the running ones and the next few
            # queued ones can have moved; everything is looked at every SWEEP_S (retries, other priorities).
            running = [t for t in pending if status[t] == "running"]
            queued = [t for t in pending if status[t] != "running"]
            look = running + queued[: len(running) + 2]
            if time.monotonic() - swept >= SWEEP_S:
                look, swept = list(pending), time.monotonic()
            for task_id in look:
                task = await self.store.get_task(task_id)
                if not task.status.terminal:
                    status[task_id] = str(task.status)
                    continue
                job = pending.pop(task_id)
                yield await self._outcome(task, job)
            n_running = sum(1 for t in pending if status[t] == "running")
            bar.note(f"{n_running} running, {len(pending) - n_running} queued on the fleet")
            if pending:
                await asyncio.sleep(self.poll_s or 0.1)

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
