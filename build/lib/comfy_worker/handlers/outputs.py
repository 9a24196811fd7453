"""Storing a task's outputs: every handler that produces files (the ``comfy`` handler and those built on it,
Wan2GP's) uploads them to ``{task_type}/{task_id}/`` and names the task's ``output_url`` the same way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from comfy_worker.engine import OutputItem
from comfy_worker.errors import ExecutionInterrupted
from comfy_worker.handlers.base import TaskContext
from comfy_worker.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")
DROPPED = ("cancelled", "lost")  # the task is no longer this worker's to finish: its uploads stop at once


async def stop_when_dropped(ctx: TaskContext, work: Awaitable[T], what: str) -> T:
    """``await work``, unless the task is cancelled or its lease lost first: the work is then cancelled (and
    awaited: a multipart upload's parts are stopped before the daemon gives the upload up) and
    ExecutionInterrupted is raised. A shutdown or a dead engine does not stop it: outputs on disk still go out."""
    job = asyncio.ensure_future(work)

    async def dropped() -> None:
        await ctx.cancel.wait()
        if not (ctx.cancel_reason and ctx.cancel_reason[0] in DROPPED):
            await asyncio.Event().wait()  # set for another reason: never

    watch = asyncio.ensure_future(dropped())
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (job, watch):
            if not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
    if not job.cancelled():
        return job.result()
    reason = ctx.cancel_reason[0] if ctx.cancel_reason else "cancelled"
    raise ExecutionInterrupted(f"stopped {what}: the task was {'cancelled' if reason == 'cancelled' else 'lost'}")


async def upload_outputs(ctx: TaskContext, items: list[OutputItem]) -> list[dict[str, Any]]:
    """Upload every output item to ``{task_type}/{task_id}/{filename}``; the list for ``result.outputs``."""
    outputs: list[dict[str, Any]] = []
    used: set[str] = set()
    for item in items:
        name = item.filename
        if name in used:  # the same filename from two nodes or subfolders: keep both
            name = f"{item.node_id}_{name}"
        used.add(name)
        stored = await stop_when_dropped(
            ctx,
            ctx.storage.upload(
                item.path,
                ctx.storage_path(name),
                content_type=item.content_type,
                sha256=item.sha256,  # hashed while it downloaded from ComfyUI: not read again to hash it
                journal=ctx.uploads,
            ),
            f"uploading {name}",
        )
        outputs.append(
            {
                "node_id": item.node_id,
                "kind": item.kind,
                "filename": name,
                "storage_path": stored.path,
                "url": stored.url,
                "bytes": stored.bytes,
                "sha256": stored.sha256,
                "content_type": stored.content_type,
            }
        )
        log.info(
            "output_uploaded",
            node_id=item.node_id,
            kind=item.kind,
            storage_path=stored.path,
            bytes=stored.bytes,
        )
    return outputs


def pick_output_url(outputs: list[dict[str, Any]]) -> str | None:
    """The first video, else the first image."""
    for kind in ("video", "image"):
        for o in outputs:
            if o["kind"] == kind:
                return str(o["url"])
    return None
