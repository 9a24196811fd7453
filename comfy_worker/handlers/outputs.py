"""Storing a task's outputs: every handler that produces files (the ``comfy`` handler and those built on it,
Wan2GP's) uploads them to ``{task_type}/{task_id}/`` and names the task's ``output_url`` the same way."""

from __future__ import annotations

from typing import Any

from comfy_worker.engine import OutputItem
from comfy_worker.handlers.base import TaskContext
from comfy_worker.logs import get_logger

log = get_logger(__name__)


async def upload_outputs(ctx: TaskContext, items: list[OutputItem]) -> list[dict[str, Any]]:
    """Upload every output item to ``{task_type}/{task_id}/{filename}``; the list for ``result.outputs``."""
    outputs: list[dict[str, Any]] = []
    used: set[str] = set()
    for item in items:
        name = item.filename
        if name in used:  # the same filename from two nodes or subfolders: keep both
            name = f"{item.node_id}_{name}"
        used.add(name)
        stored = await ctx.storage.upload(
            item.path,
            ctx.storage_path(name),
            content_type=item.content_type,
            sha256=item.sha256,  # hashed while it downloaded from ComfyUI: not read again to hash it
            journal=ctx.uploads,
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
