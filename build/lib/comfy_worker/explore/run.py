"""``comfy-worker run``: one workflow, here on a ComfyUI (outputs streamed to ``output/<prompt_id>/``) or as a
``comfy`` task through the queue (``--submit``, and ``--wait`` to follow it and fetch its outputs)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from comfy_worker.engine import ComfyClient, events, validate
from comfy_worker.explore.bar import Bar
from comfy_worker.explore.fs import move_into
from comfy_worker.explore.source import read_json, to_api
from comfy_worker.models import NewTask, TaskStatus
from comfy_worker.storage import Storage
from comfy_worker.store import TaskStore


async def run_local(workflow_file: Path, server: str, out_root: Path, *, timeout_s: float = 3600.0,
                    out: TextIO | None = None) -> tuple[str, list[Path]]:
    """Queue the workflow on ``server``, show progress, stream its outputs; (prompt id, files)."""
    out = out or sys.stderr
    raw = read_json(workflow_file, "workflow file")
    async with ComfyClient(server) as client:
        object_info = await client.object_info()
        workflow, converted = to_api(raw, object_info, where=str(workflow_file))
        if converted:
            print(f"converted the UI export to API format ({len(workflow)} nodes)", file=out)
        validate(workflow, object_info)
        prompt_id = await client.queue_prompt(workflow)
        bar = Bar(len(workflow), "nodes", stream=out)
        bar.note(f"prompt {prompt_id} queued")
        seen: set[str] = set()

        def on_event(event: events.Event) -> None:
            if isinstance(event, events.ExecutionCached):
                seen.update(str(n) for n in event.nodes)
                bar.update(len(seen))
            elif isinstance(event, events.Executing) and event.node is not None:
                seen.add(str(event.node))
                bar.update(len(seen) - 1)
                bar.note(f"node {event.node} ({workflow.get(str(event.node), {}).get('class_type', '?')})")
            elif isinstance(event, events.Progress) and event.max:
                bar.note(f"node {event.node} {event.value}/{event.max}")

        try:
            history = await client.wait(prompt_id, on_event=on_event, deadline_s=timeout_s)
        finally:
            bar.close()
        dest = out_root.resolve() / prompt_id
        items = await client.download_outputs(history, dest / ".download")
        files = move_into([i.path for i in items], dest)
        shutil.rmtree(dest / ".download", ignore_errors=True)
    for f in files:
        print(f, flush=True)
    print(f"{len(files)} output file(s) in {dest}", file=out, flush=True)
    return prompt_id, files


async def submit(store: TaskStore, workflow_file: Path, *, priority: int = 0, max_attempts: int = 3,
                 task_id: str | None = None) -> str:
    raw = read_json(workflow_file, "workflow file")
    params: dict[str, Any] = {"workflow": raw}
    task = await store.enqueue(NewTask("comfy", params, task_id=task_id or str(uuid.uuid4()), priority=priority,
                                       max_attempts=max_attempts))
    return task.task_id


async def wait_and_fetch(store: TaskStore, storage: Storage, task_id: str, out_root: Path, *,
                         timeout_s: float = 0, poll_s: float = 0.5, out: TextIO | None = None) -> int:
    """Follow the task with a bar until it ends; download its outputs to ``out_root/<task_id>/``."""
    out = out or sys.stderr
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s if timeout_s else None
    bar = Bar(100, "percent", stream=out)
    try:
        while True:
            task = await store.get_task(task_id)
            p = task.progress or {}
            if isinstance(p.get("percent"), int | float):
                bar.update(int(p["percent"]))
            bar.note(f"{task.status}" + (f" on {task.worker_id}" if task.worker_id else "")
                     + (f", node {p['node']}" if p.get("node") else ""))
            if task.status.terminal:
                break
            if deadline is not None and loop.time() > deadline:
                print(f"\nstill {task.status} after {timeout_s:.0f} s; stopped waiting (the task goes on)", file=out)
                return 1
            await asyncio.sleep(poll_s)
    finally:
        bar.close()
    if task.status is not TaskStatus.COMPLETE:
        print(f"{task.status}: {task.error}", file=out)
        return 1
    dest = out_root.resolve() / task_id
    for o in (task.result or {}).get("outputs") or []:
        path = await storage.download(o["storage_path"], dest / Path(o["filename"]).name)
        print(path, flush=True)
    print(f"complete; outputs in {dest}", file=out, flush=True)
    return 0
