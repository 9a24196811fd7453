"""The disk floor (free space per filesystem, room for a declared size, what counts as a disk fault) and the
file removal helpers the cleanup and the sweep use."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from comfy_worker.diskspace import (
    GB,
    DiskFloor,
    disk_fault,
    remove_path,
    remove_stale_children,
    tree_bytes,
)
from comfy_worker.errors import (
    DiskFull,
    EngineUnavailable,
    ExecutionFailed,
    InputRejected,
    InputUnavailable,
    WorkflowInvalid,
)


def test_paths_on_one_filesystem_are_measured_once_and_the_fullest_decides(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b" / "not-yet"  # a path that does not exist yet is measured by its parent
    a.mkdir()
    calls: list[Path] = []

    def free(path: Path) -> int:
        calls.append(path)
        return 5 * GB

    report = DiskFloor([a, b], 2 * GB, free).check()
    assert len(report.filesystems) == 1 and len(calls) == 1
    assert set(report.filesystems[0].paths) == {str(a), str(b)}
    assert report.ok and not report.near and report.free_bytes == 5 * GB
    low = DiskFloor([a], 2 * GB, lambda _p: GB).check()
    assert not low.ok and low.near and low.metadata()["below_floor"] is True
    assert "1.00 GB free (floor 2.00 GB)" in low.describe() and str(a) in low.describe()
    assert DiskFloor([a], 2 * GB, lambda _p: 2 * GB + GB // 2).check().near  # above the floor, under 1.5 x


def test_two_filesystems_are_reported_separately_and_one_below_is_enough(tmp_path: Path) -> None:
    floor = DiskFloor([tmp_path, Path("/proc")], GB, lambda p: 10 * GB if p == tmp_path else GB // 2)
    report = floor.check()
    assert len(report.filesystems) == 2
    assert [f.paths for f in report.below] == [("/proc",)]
    assert report.free_bytes == GB // 2 and not report.ok


def test_room_for_refuses_a_size_that_crosses_the_floor_counting_each_copy_on_a_filesystem(tmp_path: Path) -> None:
    work, comfy_input = tmp_path / "work", tmp_path / "input"
    floor = DiskFloor([work, comfy_input], 2 * GB, lambda _p: 5 * GB)
    floor.room_for(GB, "input URL x", [work])  # 5 - 1 >= 2
    floor.room_for(GB, "input URL x", [work, comfy_input])  # 5 - 2 x 1 >= 2
    with pytest.raises(DiskFull) as info:
        floor.room_for(2 * GB, "input URL https://h/big.mp4", [work, comfy_input])  # 5 - 2 x 2 < 2
    message = str(info.value)
    assert "input URL https://h/big.mp4 is 2.00 GB" in message and "MIN_FREE_DISK_GB" in message
    assert info.value.retryable and info.value.details["free_bytes"] == 5 * GB
    with pytest.raises(DiskFull):  # even without a floor, more than is free never fits
        DiskFloor([work], 0, lambda _p: GB).room_for(GB + 1, "x")


def test_disk_faults_are_told_from_other_failures() -> None:
    def raised_from(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise InputUnavailable("download failed") from inner
        except BaseException as outer:
            return outer

    assert disk_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_fault(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_fault(raised_from(OSError(errno.ENOSPC, "No space left on device")))  # anywhere in the chain
    assert disk_fault(DiskFull("no room"))
    node = ExecutionFailed(
        "node 9 (SaveImage) failed",
        details={"exception_type": "OSError", "exception_message": "[Errno 28] No space left on device: '/o/x.png'"},
    )
    assert disk_fault(node)
    join = ExecutionFailed(
        "join segments: ffmpeg exited with status 1",
        details={"stderr_tail": "[out#0/mp4] Error writing trailer: No space left on device"},
    )
    assert disk_fault(join)
    assert not disk_fault(OSError(errno.EACCES, "Permission denied"))
    assert not disk_fault(ExecutionFailed("node 9 failed", details={"exception_message": "CUDA out of memory"}))
    assert not disk_fault(EngineUnavailable("ComfyUI restarting"))

    below = DiskFloor([Path("/")], 10 * GB, lambda _p: GB).check()
    assert disk_fault(EngineUnavailable("upload refused with 500"), below)  # transient while below the floor
    assert disk_fault(ExecutionFailed("node 3 failed"), below)
    assert not disk_fault(InputRejected("params.workflow is missing"), below)  # never the disk's doing
    assert not disk_fault(WorkflowInvalid("unknown node NoSuchNode"), below)


def _old(path: Path, age_s: float) -> None:
    t = path.stat().st_mtime - age_s
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t))


def test_remove_stale_children_keeps_running_and_recent_entries(tmp_path: Path) -> None:
    root = tmp_path / "comfy_worker"
    for name, size in (("done", 100), ("running", 10), ("recent", 10)):
        (root / name / "sub").mkdir(parents=True)
        (root / name / "sub" / "f.bin").write_bytes(b"x" * size)
    _old(root / "done", 7200)
    _old(root / "running", 7200)
    removed = remove_stale_children(root, lambda n: n == "running", 3600, (root / "recent").stat().st_mtime)
    assert removed.files == 1 and removed.bytes == 100 and removed.paths == [str(root / "done")]
    assert sorted(p.name for p in root.iterdir()) == ["recent", "running"]
    # a recent file deep inside an old folder keeps the folder
    (root / "old").mkdir()
    (root / "old" / "new.bin").write_bytes(b"1")
    os.utime(root / "old", (1, 1))
    assert not remove_stale_children(root, lambda n: n != "old", 3600, (root / "old" / "new.bin").stat().st_mtime)
    assert remove_stale_children(tmp_path / "missing", lambda _n: False, 0, 0).files == 0


def test_files_only_sweep_leaves_folders(tmp_path: Path) -> None:
    (tmp_path / "ComfyUI_temp_x_00001_.png").write_bytes(b"p" * 7)
    (tmp_path / "keepdir").mkdir()
    _old(tmp_path / "ComfyUI_temp_x_00001_.png", 100)
    _old(tmp_path / "keepdir", 100)
    removed = remove_stale_children(tmp_path, lambda _n: False, 50, os.path.getmtime(tmp_path) + 1, files_only=True)
    assert removed.bytes == 7 and (tmp_path / "keepdir").is_dir()


def test_tree_bytes_and_remove_path(tmp_path: Path) -> None:
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "x").write_bytes(b"12345")
    (tmp_path / "t" / "y").write_bytes(b"12")
    assert tree_bytes(tmp_path / "t") == 7 and tree_bytes(tmp_path / "nope") == 0
    assert remove_path(tmp_path / "t" / "y").bytes == 2
    removed = remove_path(tmp_path / "t")
    assert (removed.files, removed.bytes) == (1, 5) and not (tmp_path / "t").exists()
    assert not remove_path(tmp_path / "t")
