"""The daemon's upkeep without a daemon: the claim gate over an injected free-space function, the pause after
a disk fault, the sweep sparing running tasks, the room check for inputs."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from comfy_worker.config import load_settings
from comfy_worker.diskspace import GB
from comfy_worker.engine.comfyui import ComfyEngine
from comfy_worker.errors import DiskFull
from comfy_worker.upkeep import DISK_FAULT_PAUSE_S, Upkeep


def upkeep(tmp_path: Path, free: dict[str, int], running: set[str] | None = None, **env: str) -> Upkeep:
    for name in ("input", "output"):
        (tmp_path / name).mkdir(exist_ok=True)
    settings = load_settings({
        "COMFY_URL": "http://127.0.0.1:9", "COMFY_INPUT_DIR": str(tmp_path / "input"),
        "COMFY_OUTPUT_DIR": str(tmp_path / "output"), "POLL_INTERVAL": "0.01", "MIN_FREE_DISK_GB": "2",
        "LOCAL_STORAGE_DIR": str(tmp_path / "storage"), **env,
    })  # fmt: skip
    u = Upkeep(settings, comfy=ComfyEngine.from_settings(settings, worker_id="w1"), work_root=tmp_path / "work" / "w1",
               active=lambda: set(running or ()), free_fn=lambda p: free.get(Path(p).name, free["*"]))  # fmt: skip
    u.configure()
    return u


async def test_the_gate_pauses_once_reports_why_and_resumes(tmp_path: Path) -> None:
    free = {"*": GB}
    u = upkeep(tmp_path, free)
    assert {str(tmp_path / n) for n in ("work/w1", "input", "output", "storage")} <= {str(p) for p in u.disk.paths}
    with capture_logs() as logs:
        for i in range(4):  # free space moves a little while below the floor: one pause, not four
            free["*"] = GB + i * 10 * 1024 * 1024
            assert await u.may_claim() is False
        meta = await u.metadata()
        free["*"] = 3 * GB
        assert await u.may_claim() is True
    events = [e["event"] for e in logs]
    assert events.count("claiming_paused") == 1 and events.count("claiming_resumed") == 1
    assert meta["disk"]["claiming"] is False and meta["disk"]["below_floor"] is True
    reason = meta["disk"]["reason"]
    assert reason.startswith("disk below MIN_FREE_DISK_GB") and "floor 2.00 GB" in reason
    assert set(meta["comfy_bytes"]) == {"input", "output"} and "work_bytes" in meta
    after = await u.metadata()
    assert after["disk"]["claiming"] is True and after["disk"]["reason"] is None


async def test_a_disk_fault_pauses_claiming_with_a_doubling_pause(tmp_path: Path) -> None:
    u = upkeep(tmp_path, {"*": 50 * GB})
    assert u.disk_fault(OSError(errno.ENOSPC, "No space left on device"))
    u.note_disk_fault("[Errno 28] No space left on device")
    assert await u.may_claim() is False
    assert "a task met a full disk" in (await u.metadata())["disk"]["reason"]
    assert u._hold_s == 2 * DISK_FAULT_PAUSE_S
    u._hold_until = time.monotonic()  # the pause is over
    assert await u.may_claim() is True
    u.note_success()
    assert u._hold_s == DISK_FAULT_PAUSE_S


def test_room_for_an_input_counts_the_download_and_its_upload(tmp_path: Path) -> None:
    u = upkeep(tmp_path, {"*": 5 * GB})
    u.room_for_input(GB, "input URL x")  # work dir and ComfyUI input on one filesystem: 5 - 2 x 1 >= 2
    with pytest.raises(DiskFull, match=r"input URL y is 2\.00 GB"):
        u.room_for_input(2 * GB, "input URL y")


async def test_the_sweep_spares_tasks_running_here_however_old(tmp_path: Path) -> None:
    u = upkeep(tmp_path, {"*": 50 * GB}, running={"long-task"})
    old = time.time() - 7200
    for rel in ("output/comfy_worker/long-task/1-0/a.png", "output/comfy_worker/gone/1-0/a.png",
                "work/w1/long-task-1/inputs/in.png", "work/w1/gone-2/inputs/in.png"):  # fmt: skip
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        for p in [path, *path.parents][:5]:
            os.utime(p, (old, old))
    removed = await u.sweep()
    assert sorted(Path(p).name for p in removed.paths) == ["gone", "gone-2"]
    assert (tmp_path / "output/comfy_worker/long-task/1-0/a.png").is_file()
    assert (tmp_path / "work/w1/long-task-1/inputs/in.png").is_file()
    keep = upkeep(tmp_path, {"*": 50 * GB}, KEEP_COMFY_FILES="true")
    assert not await keep.sweep() and (tmp_path / "output/comfy_worker/long-task").is_dir()
