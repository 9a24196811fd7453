"""The disk floor: free space on every filesystem a worker writes, whatever engine it runs.

A worker writes to a few directories (its work dir, the engine's folders, a local storage dir). They are
grouped by filesystem (``st_dev``), so a disk shared by several of them is measured once and a write that
lands twice on it (a download, then its copy into ComfyUI's input folder) is counted twice.

* :meth:`DiskFloor.check` says whether every filesystem has at least ``MIN_FREE_DISK_GB`` free: the daemon
  stops claiming while one does not.
* :meth:`DiskFloor.room_for` refuses (:class:`~comfy_worker.errors.DiskFull`) a write of a declared size that
  would take a filesystem below the floor, before a byte is written.
* :func:`disk_fault` tells whether a failure was the disk's doing (ENOSPC anywhere in the exception chain, or a
  ComfyUI node that reported it), so the task is released rather than failed.

The free-space function is injectable (tests drive stop / report / resume with it).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.errors import ComfyWorkerError, DiskFull, ExecutionFailed, Permanent

GB = 1024**3
NEAR_FACTOR = 1.5  # "near the floor": less than 1.5 x the floor free (the worker_disk view uses the same)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FreeFn = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on ``path``'s filesystem (the nearest existing ancestor)."""
    return shutil.disk_usage(_existing(path)).free


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _device(path: Path) -> int:
    return os.stat(_existing(path)).st_dev


@dataclass(frozen=True)
class FsFree:
    """One filesystem: the directories of ours on it and its free bytes."""

    paths: tuple[str, ...]
    free_bytes: int


@dataclass(frozen=True)
class DiskReport:
    filesystems: tuple[FsFree, ...]
    floor_bytes: int

    @property
    def free_bytes(self) -> int:
        """Free bytes on the fullest filesystem."""
        return min((f.free_bytes for f in self.filesystems), default=0)

    @property
    def below(self) -> list[FsFree]:
        return [f for f in self.filesystems if f.free_bytes < self.floor_bytes]

    @property
    def ok(self) -> bool:
        return not self.below

    @property
    def near(self) -> bool:
        return self.free_bytes < self.floor_bytes * NEAR_FACTOR

    def describe(self) -> str:
        """One line for logs and the worker row: which filesystem is low, by how much."""
        low = self.below or sorted(self.filesystems, key=lambda f: f.free_bytes)[:1]
        return "; ".join(
            f"{', '.join(f.paths)}: {f.free_bytes / GB:.2f} GB free (floor {self.floor_bytes / GB:.2f} GB)"
            for f in low
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "free_bytes": self.free_bytes,
            "floor_bytes": self.floor_bytes,
            "below_floor": not self.ok,
            "filesystems": [{"paths": list(f.paths), "free_bytes": f.free_bytes} for f in self.filesystems],
        }


class DiskFloor:
    """Free space on the filesystems of ``paths`` against a floor of ``min_free_bytes``."""

    def __init__(self, paths: Iterable[Path], min_free_bytes: int, free_fn: FreeFn | None = None) -> None:
        self.paths = list(dict.fromkeys(Path(p).absolute() for p in paths))
        self.min_free_bytes = int(min_free_bytes)
        self.free_fn: FreeFn = free_fn or free_bytes

    def _groups(self, paths: Iterable[Path]) -> list[list[Path]]:
        groups: dict[int, list[Path]] = {}
        for p in paths:
            try:
                dev = _device(p)
            except OSError:
                dev = hash(str(p))
            groups.setdefault(dev, []).append(p)
        return list(groups.values())

    def check(self) -> DiskReport:
        filesystems = tuple(
            FsFree(tuple(str(p) for p in group), int(self.free_fn(group[0]))) for group in self._groups(self.paths)
        )
        return DiskReport(filesystems, self.min_free_bytes)

    def room_for(self, nbytes: int, what: str, paths: Iterable[Path] | None = None) -> None:
        """Raise DiskFull unless writing ``nbytes`` to each of ``paths`` (default: every path) leaves every
        filesystem at or above the floor. Two paths on one filesystem need twice the room."""
        for group in self._groups([Path(p).absolute() for p in (paths if paths is not None else self.paths)]):
            need = nbytes * len(group)
            free = int(self.free_fn(group[0]))
            if free - need < self.min_free_bytes:
                raise DiskFull(
                    f"{what} is {nbytes / GB:.2f} GB; {group[0]} has {free / GB:.2f} GB free and the worker keeps "
                    f"{self.min_free_bytes / GB:.2f} GB (MIN_FREE_DISK_GB): released for a worker with more room",
                    details={"bytes": nbytes, "free_bytes": free, "floor_bytes": self.min_free_bytes,
                             "path": str(group[0])},
                )  # fmt: skip


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def disk_fault(exc: BaseException, report: DiskReport | None = None) -> bool:
    """True when ``exc`` was the disk's doing: DiskFull or an OSError with ENOSPC / EDQUOT anywhere in its chain,
    a ComfyUI node that failed with one (it reports the ``[Errno 28]`` text of Python's OSError), a tool (ffmpeg
    joining segments) whose stderr carries the C library's text for it, or any transient failure (or node
    failure) while ``report`` shows a filesystem below the floor. Permanent input and workflow errors stay what
    they are."""
    for e in _chain(exc):
        if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in DISK_ERRNOS):
            return True
        if isinstance(e, ComfyWorkerError):
            message = str(e.details.get("exception_message") or "")
            if any(message.startswith(f"[Errno {n}]") for n in DISK_ERRNOS):
                return True
            stderr = str(e.details.get("stderr_tail") or "")  # a tool such as ffmpeg prints strerror(ENOSPC)
            if any(os.strerror(n) in stderr for n in DISK_ERRNOS):
                return True
    if report is not None and not report.ok:
        return isinstance(exc, ExecutionFailed) or not isinstance(exc, Permanent)
    return False


# --- removing what is no longer needed (sync: callers run these in a thread) ---------------------------------


@dataclass
class Removed:
    """What a cleanup or sweep removed."""

    files: int = 0
    bytes: int = 0
    paths: list[str] = field(default_factory=list)  # top-level entries removed (for the sweep's log)

    def __iadd__(self, other: Removed) -> Removed:
        self.files += other.files
        self.bytes += other.bytes
        self.paths.extend(other.paths)
        return self

    def __bool__(self) -> bool:
        return bool(self.files or self.paths)


def _walk_files(path: Path) -> Iterable[os.stat_result]:
    try:
        if not path.is_dir() or path.is_symlink():
            yield path.lstat()
            return
    except OSError:
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                yield os.lstat(os.path.join(root, name))
            except OSError:
                continue


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(st.st_size for st in _walk_files(path))


def newest_mtime(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    return max([newest, *(st.st_mtime for st in _walk_files(path))])


def remove_path(path: Path) -> Removed:
    """Remove a file or a whole tree; what it held. A path that is not there removes nothing."""
    stats = list(_walk_files(path))
    if not stats:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        return Removed()
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return Removed(len(stats), sum(st.st_size for st in stats), [str(path)])


def remove_stale_children(
    root: Path, keep: Callable[[str], bool], older_than_s: float, now: float, *, files_only: bool = False
) -> Removed:
    """Remove each entry of ``root`` (files only with ``files_only``) that ``keep(name)`` does not claim and that
    nothing under has changed for ``older_than_s``."""
    removed = Removed()
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if keep(entry.name) or (files_only and (entry.is_dir() and not entry.is_symlink())):
            continue
        if now - newest_mtime(entry) < older_than_s:
            continue
        removed += remove_path(entry)
    return removed
