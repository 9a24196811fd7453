"""Keeping a worker fit for weeks: the disk floor before each claim, cleanup after each task, orphan sweeps,
and what the heartbeat says about disk space.

The daemon calls this module at a handful of points and knows nothing of its rules:

* ``start()`` — ComfyUI's folders resolved (a bad COMFY_*_DIR stops the worker), said once when unknown, and
  the first orphan sweep;
* ``may_claim()`` before each claim — False (after a pause) while a filesystem the worker writes is below
  MIN_FREE_DISK_GB, or while it backs off after a task met a full disk; it logs each change of state and the
  heartbeat carries the reason to the worker row;
* ``task_ended()`` — a task's cleanup once its end is recorded (its work dir; with ComfyUI, what its
  :class:`~comfy_worker.engine.scoped.TaskClient` left there), then the memory the task freed goes back to the
  system (:mod:`comfy_worker.memory`);
* ``disk_fault()`` / ``note_disk_fault()`` — a failure that was the disk's doing releases the task instead;
* ``metadata()`` — free space and folder sizes for each heartbeat;
* ``sweep_loop()`` — every ORPHAN_SWEEP_INTERVAL_S.

The disk floor is engine-agnostic (:mod:`comfy_worker.diskspace`); what ComfyUI leaves behind is ComfyUI's
business (:mod:`comfy_worker.engine.housekeeping`; the housekeeper comes from the ComfyUI engine, when this worker
has one). Folders other engines write into (``engine_dirs``, e.g. Wan2GP's output folder under the work root,
named with a leading ``_``, which no task's work dir has) are swept of files untouched for TASK_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.diskspace import (
    GB,
    DiskFloor,
    FreeFn,
    Removed,
    disk_fault,
    remove_path,
    remove_stale_children,
    tree_bytes,
)
from comfy_worker.engine.comfyui import ComfyEngine
from comfy_worker.engine.housekeeping import ComfyHousekeeper
from comfy_worker.engine.scoped import TaskClient
from comfy_worker.logs import get_logger
from comfy_worker.memory import release_free_memory
from comfy_worker.pathsafe import path_key

log = get_logger(__name__)
DISK_FAULT_PAUSE_S = 60.0  # after a task met a full disk: first pause before claiming again (doubles, capped)
DISK_FAULT_PAUSE_MAX_S = 900.0
SIZES_TTL_S = 30.0  # folder sizes are walked at most this often


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        *,
        comfy: ComfyEngine | None,
        work_root: Path,
        active: Callable[[], set[str]] = set,
        free_fn: FreeFn | None = None,
        engine_dirs: tuple[Path, ...] = (),
    ) -> None:
        """``active()``: the ids of the tasks this worker runs now (their files are never swept). ``comfy``:
        this worker's ComfyUI engine (its housekeeper), None without one."""
        self.settings = settings
        self.active = active
        self.work_root = work_root
        self.comfy_engine = comfy
        self.engine_dirs = engine_dirs
        self.keep = settings.keep_comfy_files
        self.comfy: ComfyHousekeeper | None = None
        self.disk = DiskFloor([work_root], int(settings.min_free_disk_gb * GB), free_fn)
        self.claiming = True
        self.reason: str | None = None
        self._paused_for: str | None = None  # "floor" | "disk_fault": log and sweep once per pause, not per poll
        self._hold_until = 0.0
        self._hold_reason = ""
        self._hold_s = DISK_FAULT_PAUSE_S
        self._sizes: dict[str, Any] = {}
        self._sizes_at = float("-inf")

    # --- start ----------------------------------------------------------------------------------------------

    def configure(self) -> None:
        """Resolve ComfyUI's folders and the filesystems the floor watches; ConfigError names a bad variable."""
        self.comfy = self.comfy_engine.housekeeper() if self.comfy_engine is not None else None
        paths = [self.work_root, *(self.comfy.folders.known if self.comfy is not None else [])]
        if self.settings.storage_backend == "local":
            paths.append(self.settings.local_storage_path)
        self.disk.paths = list(dict.fromkeys(p.absolute() for p in paths))

    async def start(self) -> None:
        if self.comfy is None:
            self.configure()
        if self.comfy is not None and not self.comfy.folders.known and not self.keep:
            log.warning(
                "comfy_folders_unknown",
                hint="set COMFY_INPUT_DIR and COMFY_OUTPUT_DIR (and COMFY_TEMP_DIR) to ComfyUI's folders as this "
                "worker sees them; until then only ComfyUI's history is cleaned after each task",
            )
        log.info(
            "upkeep_configured",
            comfy_folders=self.comfy.describe() if self.comfy is not None else None,
            keep_comfy_files=self.keep,
            min_free_disk_gb=self.settings.min_free_disk_gb,
            disk_paths=[str(p) for p in self.disk.paths],
        )
        await self.sweep()

    # --- claiming -------------------------------------------------------------------------------------------

    async def may_claim(self) -> bool:
        """True when the worker may claim now; otherwise pauses one poll interval and returns False."""
        report = await asyncio.to_thread(self.disk.check)
        if not report.ok:
            why, reason = "floor", f"disk below MIN_FREE_DISK_GB: {report.describe()}"
        elif time.monotonic() < self._hold_until:
            why, reason = "disk_fault", self._hold_reason
        else:
            if not self.claiming:
                log.info("claiming_resumed", free_gb=round(report.free_bytes / GB, 2))
            self.claiming, self.reason, self._paused_for = True, None, None
            return True
        if why != self._paused_for:
            log.warning("claiming_paused", reason=reason, free_gb=round(report.free_bytes / GB, 2))
            if why == "floor":
                await self.sweep()  # orphans may be what filled it
        self.claiming, self.reason, self._paused_for = False, reason, why
        await asyncio.sleep(self.settings.poll_interval)
        return False

    def room_for_input(self, nbytes: int, what: str) -> None:
        """Refuse (DiskFull) an input of declared size ``nbytes`` that would take the work dir's or ComfyUI's
        input folder's filesystem below the floor: it is downloaded to the one, then uploaded to the other."""
        paths = [self.work_root]
        if self.comfy is not None and self.comfy.folders.input is not None:
            paths.append(self.comfy.folders.input)
        self.disk.room_for(nbytes, what, paths)

    def disk_fault(self, exc: BaseException) -> bool:
        """Was this failure the disk's doing? (then the task is released, not failed)"""
        try:
            report = self.disk.check()
        except OSError:
            report = None
        return disk_fault(exc, report)

    def note_disk_fault(self, error: str) -> None:
        """A task met a full disk: pause claiming (60 s, doubling to 15 min) so another worker can take it."""
        self._hold_until = time.monotonic() + self._hold_s
        self._hold_reason = f"a task met a full disk ({error}); claiming again in {self._hold_s:.0f} s"
        self._hold_s = min(self._hold_s * 2, DISK_FAULT_PAUSE_MAX_S)

    def note_success(self) -> None:
        self._hold_s = DISK_FAULT_PAUSE_S

    # --- tasks ----------------------------------------------------------------------------------------------

    async def task_ended(self, scope: Any, work_dir: Path) -> None:
        """Remove the task's work dir and what it left in ComfyUI (nothing with KEEP_COMFY_FILES), then give the
        memory the task freed back to the system (:mod:`comfy_worker.memory`), so RSS follows memory in use."""
        if self.keep:
            release_free_memory()
            return
        t0 = time.monotonic()
        try:
            removed = await asyncio.to_thread(remove_path, work_dir)
            history = 0
            if self.comfy is not None and isinstance(scope, TaskClient):
                cleaned = await self.comfy.clean_task(scope)
                if cleaned is not None:
                    removed += cleaned.removed
                    history = cleaned.history
        except OSError as exc:  # what stays behind is swept later
            log.warning("task_cleanup_failed", error=str(exc))
            release_free_memory()
            return
        seconds = round(time.monotonic() - t0, 4)
        released = release_free_memory()  # a fraction of a millisecond (bench_soak), so on the loop's thread
        log.info(
            "task_files_removed",
            files=removed.files,
            bytes=removed.bytes,
            history_entries=history,
            seconds=seconds,
            **({"memory_released_bytes": released.bytes, "trim_s": round(released.seconds, 5)} if released else {}),
        )

    # --- sweeping -------------------------------------------------------------------------------------------

    async def sweep(self) -> Removed:
        """Files no running task owns, untouched for TASK_TIMEOUT_S, in ComfyUI's folders and the work root."""
        if self.keep:
            return Removed()
        active = self.active()
        older = self.settings.task_timeout_s
        now = time.time()

        def run() -> Removed:
            keys = {path_key(t) for t in active}  # work dirs are named <path_key(task id)>-<attempt>
            # engine folders ("_wan2gp") are kept; their stale files are swept below
            removed = remove_stale_children(
                self.work_root, lambda n: n.startswith("_") or n.rsplit("-", 1)[0] in keys, older, now
            )
            for folder in self.engine_dirs:
                removed += remove_stale_children(folder, lambda _n: False, older, now)
            if self.comfy is not None:
                removed += self.comfy.sweep(active, older, now)
            return removed

        removed = await asyncio.to_thread(run)
        if removed:
            log.info("orphans_swept", files=removed.files, bytes=removed.bytes, paths=removed.paths[:20])
        return removed

    async def sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.orphan_sweep_interval_s)
            try:
                await self.sweep()
            except OSError as exc:
                log.warning("orphan_sweep_failed", error=str(exc))

    # --- reporting ------------------------------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """``disk`` (free bytes, floor, whether claiming and why not) and folder sizes, for the worker row."""
        report = await asyncio.to_thread(self.disk.check)
        if time.monotonic() - self._sizes_at >= SIZES_TTL_S:
            self._sizes = await asyncio.to_thread(self._folder_sizes)
            self._sizes_at = time.monotonic()
        return {
            "disk": {**report.metadata(), "claiming": self.claiming, "reason": self.reason},
            **self._sizes,
        }

    def _folder_sizes(self) -> dict[str, Any]:
        comfy = self.comfy.folder_bytes() if self.comfy is not None else {}
        return {"comfy_bytes": comfy, "work_bytes": tree_bytes(self.work_root)}
