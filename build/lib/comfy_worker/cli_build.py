"""``comfy-worker build TYPE --set key=value …``: print a Wan 2.2 graph built from parameters, or queue the task.

* no flag: the API-format graph on stdout (or in ``--out FILE``); notes (drawn seed, rounded frames) on stderr.
  Media given as a path or URL appear as written in the loader nodes (a ``comfy`` task fetches URLs there).
* ``--submit``: queue a ``TYPE`` task with these params (local media files are uploaded to storage first) and
  print its task id; ``--wait`` also follows it to the end.

Values are read as JSON when they parse (``width=832``, ``use_lora=true``, ``loras='[{"name": …}]'``), else as
text (``prompt=a cat on a sofa``).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_worker.builders import TASK_TYPES, accepted_keys, build_resolved, resolve
from comfy_worker.builders.params import MEDIA_KEYS
from comfy_worker.config import Settings, is_input_url
from comfy_worker.errors import InputRejected
from comfy_worker.models import NewTask
from comfy_worker.store import TaskStore

if TYPE_CHECKING:
    from comfy_worker.storage import Storage

WaitFn = Callable[[TaskStore, str], Awaitable[int]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_type", choices=TASK_TYPES, help="the Wan 2.2 task type")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter (repeatable); image/last_image/audio take a local file or a URL",
    )
    p.add_argument("--out", type=Path, help="write the graph to this file instead of stdout")
    p.add_argument("--submit", action="store_true", help="queue the task instead of printing the graph")
    p.add_argument("--wait", action="store_true", help="queue the task and show its progress until it ends")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--task-id", help="choose the task id (idempotent re-submits)")


def parse_sets(task_type: str, sets: list[str]) -> dict[str, Any]:
    """``["width=832", "prompt=a cat"]`` → ``{"width": 832, "prompt": "a cat"}``; errors name the flag."""
    params: dict[str, Any] = {}
    for flag in sets:
        key, sep, text = flag.partition("=")
        key = key.strip()
        if not sep or not key:
            keys = ", ".join(accepted_keys(task_type))
            raise InputRejected(f"--set {flag!r}: expected KEY=VALUE; keys of {task_type}: {keys}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key in (*MEDIA_KEYS, "prompt", "negative_prompt", "filename_prefix") and not isinstance(value, dict):
            value = text  # keep text as written (a prompt of "42" stays text)
        params[key] = value
    return params


def _is_url(value: Any) -> bool:
    return is_input_url(value)


async def run_build(
    args: argparse.Namespace, settings: Settings, open_store: Callable[[], TaskStore], wait_for: WaitFn
) -> int:
    params = parse_sets(args.task_type, args.sets)
    if not (args.submit or args.wait):
        media = {k: params.pop(k) for k in MEDIA_KEYS if isinstance(params.get(k), str)}
        resolved = resolve(args.task_type, {**params, **{k: {"storage_path": v} for k, v in media.items()}})
        graph = build_resolved(resolved, media)
        for note in resolved.notes:
            print(f"note: {note}", file=sys.stderr)
        text = json.dumps(graph, indent=2, ensure_ascii=False) + "\n"
        if args.out:
            args.out.write_text(text, encoding="utf-8")
            print(f"wrote {args.out} ({len(graph)} nodes)", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    task_id = args.task_id or str(uuid.uuid4())
    params = await _stage_media(params, settings, task_id)
    resolve(args.task_type, params)  # refuse bad params here, before anything is queued
    store = open_store()
    try:
        await store.connect()
        if store.name == "sqlite":
            await store.migrate()
        task = await store.enqueue(NewTask(args.task_type, params, task_id=task_id, priority=args.priority))
        print(task.task_id, flush=True)
        return await wait_for(store, task.task_id) if args.wait else 0
    finally:
        await store.close()


async def _stage_media(params: dict[str, Any], settings: Settings, task_id: str) -> dict[str, Any]:
    """Local media files → uploaded to storage, as {storage_path}; URLs → {url}."""
    async with LocalInputs(settings, task_id) as staged:
        for key in MEDIA_KEYS:
            value = params.get(key)
            if isinstance(value, str):
                params[key] = await staged.stage(value, f"--set {key}={value}:")
    return params


class LocalInputs:
    """Inputs named on the command line (``build --set``, ``submit --input``): a URL stays one; a local file is
    uploaded to storage under ``inputs/<task id>/`` (storage opened for the first, closed on leaving)."""

    def __init__(self, settings: Settings, task_id: str) -> None:
        self.settings = settings
        self.task_id = task_id
        self._storage: Storage | None = None

    async def __aenter__(self) -> LocalInputs:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._storage is not None:
            await self._storage.aclose()

    async def stage(self, source: str, flag: str) -> dict[str, str]:
        """``{"url": source}`` or ``{"storage_path": ...}``; InputRejected starting with ``flag`` for neither."""
        if _is_url(source):
            return {"url": source}
        path = Path(source)
        if not path.is_file():
            raise InputRejected(f"{flag} neither an http(s) / s3 / gs / az URL nor an existing file")
        if self._storage is None:
            from comfy_worker.storage import open_storage

            self._storage = open_storage(self.settings)
        stored = await self._storage.upload(path, f"inputs/{self.task_id}/{path.name}")
        return {"storage_path": stored.path}
