"""A chain's uploads (artifacts the next step needs, the final video) stop at once when the task is cancelled or
its lease lost, as the ``comfy`` handler's outputs do; a shutdown lets them finish (the files are on disk)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from comfy_worker.errors import ExecutionInterrupted
from comfy_worker.handlers.outputs import stop_when_dropped
from comfy_worker.handlers.prompt_runner.executor import ChainRunner
from comfy_worker.storage import LocalStorage, StoredObject
from tests.unit.prompt_runner.test_checkpoint_paths import runner


class HeldStorage(LocalStorage):
    """LocalStorage whose uploads wait for ``release`` (a slow upload in flight) and record how they ended."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ended: list[str] = []

    async def upload(self, local_path: Path, dest_path: str, **kw: Any) -> StoredObject:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("finished")
        return await super().upload(local_path, dest_path, **kw)


def guarded(tmp_path: Path) -> tuple[ChainRunner, HeldStorage, SimpleNamespace]:
    r, _ = runner(tmp_path, {})
    storage = HeldStorage(tmp_path / "storage")
    ctx = SimpleNamespace(cancel=r.env.cancel, cancel_reason=[])
    r.env.storage = storage
    r.env.guard = functools.partial(stop_when_dropped, ctx)  # as PromptRunnerHandler.prepare wires it
    return r, storage, ctx


@pytest.mark.parametrize("reason", ["cancelled", "lost"])
async def test_an_artifact_upload_stops_when_the_task_is_dropped(tmp_path: Path, reason: str) -> None:
    r, storage, ctx = guarded(tmp_path)
    src = tmp_path / "seg.mp4"
    src.write_bytes(b"x" * 1000)
    keep = asyncio.create_task(r.keep(src, "v/videos/seg.mp4"))
    await storage.started.wait()
    ctx.cancel_reason.append(reason)
    r.env.cancel.set()
    with pytest.raises(ExecutionInterrupted, match=f"stopped uploading v/videos/seg.mp4: the task was {reason}"):
        await keep
    assert storage.ended == ["cancelled"]
    assert "v/videos/seg.mp4" not in r.state.artifacts
    assert not (tmp_path / "storage" / "prompt_runner" / "task-a" / "v" / "videos" / "seg.mp4").exists()


async def test_a_shutdown_lets_the_upload_finish(tmp_path: Path) -> None:
    r, storage, ctx = guarded(tmp_path)
    src = tmp_path / "seg.mp4"
    src.write_bytes(b"x" * 1000)
    keep = asyncio.create_task(r.keep(src, "v/videos/seg.mp4"))
    await storage.started.wait()
    ctx.cancel_reason.append("shutdown")
    r.env.cancel.set()
    await asyncio.sleep(0)  # the guard sees the event and must not stop the upload for this reason
    storage.release.set()
    assert await keep == "prompt_runner/task-a/v/videos/seg.mp4"
    assert storage.ended == ["finished"]
    assert (tmp_path / "storage" / "prompt_runner" / "task-a" / "v" / "videos" / "seg.mp4").read_bytes() == b"x" * 1000
