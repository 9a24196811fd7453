"""ComfyUI as one task sees it: the daemon hands every task a :class:`TaskClient` instead of the shared client.

It speaks for the shared :class:`~comfy_worker.engine.client.ComfyClient` (same socket, same methods) and adds
what every ComfyUI-backed task type needs for long runs, whatever its handler does:

* **Its own files.** Every file the task causes lives under ``comfy_worker/<task_id>/`` in ComfyUI's folders:
  uploads go to that input subfolder, and each prompt's output nodes get a fresh ``filename_prefix`` under
  ``comfy_worker/<task_id>/<attempt>-<n>/`` (output and temp). ComfyUI's cache keys a node on its inputs, so an
  output node with a new prefix runs again and writes its own files, while everything upstream of it still
  comes from the cache. Without this, a graph identical to an earlier one finishes at once and lists the
  earlier prompt's files, which cleanup may already have removed.
* **A record for cleanup.** The prompts it queued (for ComfyUI's history) and the output files listed
  outside its folder (e.g. PreviewImage's temp files), read by :mod:`comfy_worker.engine.housekeeping`.
* **One re-run for a missing output.** When ``/view`` answers 404 for a listed output, the prompt is queued
  again with fresh output names (the cache bypassed where it matters) and its outputs downloaded from that run;
  a second miss raises :class:`~comfy_worker.errors.OutputMissing`, so the task is never complete without them.
  That re-run is GPU work outside the task's ``execute`` stage: it runs under ``guard`` (the daemon's GPU grant
  for ComfyUI), so it never overlaps another engine's work.

It is ComfyUI's :class:`~comfy_worker.engine.base.TaskEngine`: ``submit`` = :meth:`TaskClient.queue_prompt`,
``follow`` = :meth:`TaskClient.wait`, ``outputs`` = :meth:`TaskClient.download_outputs`.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

from comfy_worker.engine.base import GpuGuard
from comfy_worker.engine.client import ComfyClient, EventCallback
from comfy_worker.engine.history import History
from comfy_worker.engine.outputs import OutputItem, OutputRef, list_outputs
from comfy_worker.errors import OutputMissing
from comfy_worker.logs import get_logger
from comfy_worker.pathsafe import path_key

log = get_logger(__name__)
TASK_FOLDER = "comfy_worker"
PREFIX_INPUT = "filename_prefix"


def task_subfolder(task_id: str) -> str:
    """The subfolder of ComfyUI's input, output and temp folders that holds one task's files. A task id is
    user-chosen text: :func:`path_key` keeps it one safe path component (``../x`` never leaves the folder)."""
    return f"{TASK_FOLDER}/{path_key(task_id)}"


def prefix_outputs(workflow: dict[str, Any], prefix: str) -> int:
    """Put every literal ``filename_prefix`` of ``workflow`` under ``prefix/`` (in place); the number changed.
    A prefix fed by a link is left alone (its files are still cleaned up from the history listing), and so is
    an absolute one: only a prompt_runner chain may use those (engine.paths refuses them in task workflows), to
    save a latent exactly where its next step loads it, inside the task's own folder.

    Found on the GPU: prefixing the stock-node chain's absolute SaveLatent prefix moved every HIGH latent to
    ``comfy_worker/<task>/<attempt>-<n>/root/...``, and the chain failed with "wrote no latent"."""
    changed = 0
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict) and isinstance(inputs.get(PREFIX_INPUT), str):
            if inputs[PREFIX_INPUT].startswith("/"):
                continue
            original = inputs[PREFIX_INPUT].replace("\\", "/").lstrip("/") or "ComfyUI"
            inputs[PREFIX_INPUT] = f"{prefix}/{original}"
            changed += 1
    return changed


class TaskClient:
    """The shared ComfyClient, scoped to one task attempt (see the module docstring)."""

    def __init__(
        self,
        client: ComfyClient,
        task_id: str,
        attempt: int,
        *,
        cancel: asyncio.Event | None = None,
        deadline_s: float = 3600.0,
        stall_s: float = 600.0,
        guard: GpuGuard | None = None,
    ) -> None:
        self.client = client
        self.guard = guard
        self.task_id = task_id
        self.attempt = attempt
        self.cancel = cancel
        self.deadline_s = deadline_s
        self.stall_s = stall_s
        self.subfolder = task_subfolder(task_id)
        self.prompt_ids: list[str] = []
        self.stray_outputs: list[OutputRef] = []  # listed outputs outside self.subfolder
        self.started_at: float | None = None  # wall clock of the first prompt (files older are not ours)
        self._workflows: dict[str, dict[str, Any]] = {}
        self._reruns: set[str] = set()

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def client_id(self) -> str:
        return self.client.client_id

    def owns(self, subfolder: str) -> bool:
        sub = subfolder.replace("\\", "/").strip("/")
        return sub == self.subfolder or sub.startswith(self.subfolder + "/")

    # --- what changes for a task ---------------------------------------------------------------------------

    async def upload_file(
        self, path: str | Path, *, subfolder: str = "", overwrite: bool = True, kind: str = "input"
    ) -> str:
        """Upload into this task's subfolder (a subfolder the caller names is put beneath it)."""
        if not self.owns(subfolder):
            subfolder = "/".join(p for p in (self.subfolder, subfolder.strip("/")) if p)
        return await self.client.upload_file(path, subfolder=subfolder, overwrite=overwrite, kind=kind)

    async def queue_prompt(self, workflow: dict[str, Any], *, prompt_id: str | None = None) -> str:
        """Queue ``workflow`` (left untouched) with this task's fresh output prefix on every output node."""
        graph = copy.deepcopy(workflow)
        prefix_outputs(graph, f"{self.subfolder}/{self.attempt}-{len(self._workflows)}")
        if self.started_at is None:
            self.started_at = time.time()
        pid = await self.client.queue_prompt(graph, prompt_id=prompt_id)
        self.prompt_ids.append(pid)
        self._workflows[pid] = workflow
        return pid

    async def wait(
        self,
        prompt_id: str,
        *,
        on_event: EventCallback | None = None,
        deadline_s: float = 3600.0,
        stall_s: float = 600.0,
        cancel: asyncio.Event | None = None,
    ) -> History:
        history = await self.client.wait(
            prompt_id, on_event=on_event, deadline_s=deadline_s, stall_s=stall_s, cancel=cancel
        )
        self.stray_outputs.extend(
            r for r in list_outputs(history.outputs, include_temp=True) if not self.owns(r.subfolder)
        )
        return history

    async def download_outputs(
        self, history: History, dest_dir: str | Path, *, include_temp: bool = False
    ) -> list[OutputItem]:
        """Every output of ``history``; a missing one re-runs the prompt once with fresh output names."""
        workflow = self._workflows.get(history.prompt_id)
        try:
            return await self.client.download_outputs(history, dest_dir, include_temp=include_temp)
        except OutputMissing as exc:
            if workflow is None or history.prompt_id in self._reruns:
                raise
            log.warning("output_missing_rerun", prompt_id=history.prompt_id, error=str(exc))
        if self.guard is None:
            return await self._rerun(workflow, dest_dir, include_temp)
        async with self.guard():
            return await self._rerun(workflow, dest_dir, include_temp)

    async def _rerun(self, workflow: dict[str, Any], dest_dir: str | Path, include_temp: bool) -> list[OutputItem]:
        pid = await self.queue_prompt(workflow)
        self._reruns.add(pid)
        fresh = await self.wait(pid, deadline_s=self.deadline_s, stall_s=self.stall_s, cancel=self.cancel)
        return await self.client.download_outputs(fresh, dest_dir, include_temp=include_temp)

    # --- the engine interface (comfy_worker.engine.base.TaskEngine) --------------------------------------

    async def submit(self, job: dict[str, Any], *, prompt_id: str | None = None) -> str:
        return await self.queue_prompt(job, prompt_id=prompt_id)

    async def follow(
        self, handle: str, *, on_progress: EventCallback | None = None, cancel: asyncio.Event | None = None,
        deadline_s: float = 3600.0, stall_s: float = 600.0,
    ) -> History:
        return await self.wait(handle, on_event=on_progress, deadline_s=deadline_s, stall_s=stall_s, cancel=cancel)

    async def outputs(self, followed: History, dest: Path, *, include_temp: bool = False) -> list[OutputItem]:
        return await self.download_outputs(followed, dest, include_temp=include_temp)

    # --- the rest is the shared client's --------------------------------------------------------------------

    async def aclose(self) -> None:
        """The shared client outlives the task: nothing to close."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)
