"""What a task leaves in ComfyUI, removed once the task has ended; orphans swept; folder sizes for heartbeats.

ComfyUI's folders, as this worker sees them (:func:`comfy_folders`):

* launched with ``COMFY_PATH``: ``COMFY_PATH/{input,output,temp}``, or the ``--base-directory`` /
  ``--input-directory`` / ``--output-directory`` / ``--temp-directory`` given in ``COMFY_ARGS`` (ComfyUI puts
  its temp folder in ``<--temp-directory>/temp``);
* attached with ``COMFY_URL``: ``COMFY_INPUT_DIR``, ``COMFY_OUTPUT_DIR``, ``COMFY_TEMP_DIR`` (whichever are
  set). An explicitly set folder that does not exist stops the worker at start, naming the variable.

Per task (:meth:`ComfyHousekeeper.clean_task`, after its outputs are stored and its end recorded): the
``comfy_worker/<task_id>/`` subfolder of each folder (uploads, every output written under the task's prefix,
a chain's intermediates), output and temp files its prompts listed elsewhere (only when written after the
task's first prompt: never a file someone else made), and its prompts' history entries.

Sweep (:meth:`ComfyHousekeeper.sweep`): ``comfy_worker/<task_id>/`` subfolders of tasks not running here and
untouched for ``older_than_s``, and loose files of that age in the temp folder (ComfyUI's scratch). Nothing
else in ComfyUI's folders is ever touched: they may hold a person's own files.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.diskspace import Removed, remove_path, remove_stale_children, tree_bytes
from comfy_worker.engine.client import ComfyClient
from comfy_worker.engine.scoped import TASK_FOLDER, TaskClient, task_subfolder
from comfy_worker.errors import ConfigError, EngineUnavailable
from comfy_worker.logs import get_logger
from comfy_worker.pathsafe import path_key

log = get_logger(__name__)
FOLDER_NAMES = ("input", "output", "temp")


@dataclass(frozen=True)
class ComfyFolders:
    """ComfyUI's input, output and temp folders as this worker sees them (None: not known)."""

    input: Path | None = None
    output: Path | None = None
    temp: Path | None = None

    def items(self) -> Iterator[tuple[str, Path]]:
        for name in FOLDER_NAMES:
            path = getattr(self, name)
            if path is not None:
                yield name, path

    @property
    def known(self) -> list[Path]:
        return [p for _n, p in self.items()]


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def comfy_folders(settings: Settings) -> ComfyFolders:
    """Where ComfyUI keeps inputs, outputs and temp files (see the module docstring); ConfigError for a
    COMFY_*_DIR that does not exist."""
    explicit = {
        "input": ("COMFY_INPUT_DIR", settings.comfy_input_dir),
        "output": ("COMFY_OUTPUT_DIR", settings.comfy_output_dir),
        "temp": ("COMFY_TEMP_DIR", settings.comfy_temp_dir),
    }
    found: dict[str, Path | None] = dict.fromkeys(FOLDER_NAMES)
    for name, (variable, raw) in explicit.items():
        if raw:
            path = Path(raw).expanduser().absolute()
            # ComfyUI removes its temp folder at start and exit and makes it again on first use
            if not (path.is_dir() or (name == "temp" and path.parent.is_dir() and not path.exists())):
                raise ConfigError(
                    variable, f"{raw} is not a directory: give ComfyUI's {name} folder as this worker sees it"
                )
            found[name] = path
    launching = bool(settings.comfy_path) and not settings.comfy_url
    if launching:
        root = Path(settings.comfy_path).expanduser().absolute()
        args = shlex.split(settings.comfy_args or "")
        base = Path(_flag(args, "--base-directory") or root)
        base = base if base.is_absolute() else root / base
        for name in FOLDER_NAMES:
            if found[name] is None:
                given = _flag(args, f"--{name}-directory")
                if given is None:
                    found[name] = base / name
                else:
                    path = Path(given) if Path(given).is_absolute() else root / given
                    found[name] = path / "temp" if name == "temp" else path  # ComfyUI appends "temp"
    return ComfyFolders(**found)


@dataclass(frozen=True)
class TaskCleanup:
    history: int
    removed: Removed


class ComfyHousekeeper:
    """Per-task cleanup, the orphan sweep and folder sizes for one ComfyUI (``keep``: KEEP_COMFY_FILES)."""

    def __init__(self, client: ComfyClient, folders: ComfyFolders, *, keep: bool = False) -> None:
        self.client = client
        self.folders = folders
        self.keep = keep

    def describe(self) -> dict[str, Any]:
        return {name: str(path) for name, path in self.folders.items()}

    async def clean_task(self, scope: TaskClient) -> TaskCleanup | None:
        """Forget the task's prompts and remove its files (nothing with KEEP_COMFY_FILES)."""
        if self.keep:
            return None
        history = 0
        if scope.prompt_ids:
            try:
                await self.client.delete_history(scope.prompt_ids)
                history = len(scope.prompt_ids)
            except EngineUnavailable as exc:  # ComfyUI restarting: its history went with it
                log.warning("comfy_history_delete_failed", error=str(exc), prompts=len(scope.prompt_ids))
        removed = await asyncio.to_thread(self._remove_task_files, scope)
        return TaskCleanup(history, removed)

    def _remove_task_files(self, scope: TaskClient) -> Removed:
        removed = Removed()
        for _name, folder in self.folders.items():
            removed += remove_path(folder / task_subfolder(scope.task_id))
        since = (scope.started_at or time.time()) - 1.0
        for ref in scope.stray_outputs:
            folder = {"output": self.folders.output, "temp": self.folders.temp}.get(ref.type)
            if folder is None:
                continue  # an "input" listing is a file the task read, not one it made
            path = (folder / ref.subfolder / ref.filename).resolve()
            if not path.is_relative_to(folder.resolve()):
                continue
            try:
                if path.is_file() and path.stat().st_mtime >= since:
                    removed += remove_path(path)
            except OSError:
                continue
        return removed

    def sweep(self, active: set[str], older_than_s: float, now: float | None = None) -> Removed:
        """Remove what no running task owns and nothing touched for ``older_than_s`` (sync: run in a thread)."""
        now = time.time() if now is None else now
        removed = Removed()
        for _name, folder in self.folders.items():
            keys = {path_key(t) for t in active}
            removed += remove_stale_children(folder / TASK_FOLDER, lambda n, k=keys: n in k, older_than_s, now)
        if self.folders.temp is not None:
            removed += remove_stale_children(self.folders.temp, lambda _n: False, older_than_s, now, files_only=True)
        return removed

    def folder_bytes(self) -> dict[str, int]:
        """Bytes in each known folder (sync: run in a thread)."""
        return {name: tree_bytes(path) for name, path in self.folders.items()}
