"""Outputs are hashed once and large uploads resume: TUS uploads to the Supabase Storage stand-in (a real aiohttp
server on 127.0.0.1) whose connection is cut mid-chunk, resumed in the same attempt and by the next attempt of
the task after a restart, with the upload URL kept in the task's checkpoint in a real (SQLite) queue."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.config import load_settings
from comfy_worker.errors import StorageUnavailable
from comfy_worker.handlers.base import UPLOADS_KEY, TaskContext
from comfy_worker.models import NewTask, Task, WorkerInfo
from comfy_worker.storage import LocalStorage, SupabaseStorage, UploadJournal
from comfy_worker.storage.supabase import TUS_CHUNK
from comfy_worker.store.base import TaskStore
from tests.integration.conftest import make_store
from tests.standins.storage import StorageStandin

KEY = "service-role-key-for-tests"
MiB = 1024 * 1024
DEST = "comfy/task-7/render.mp4"


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StorageStandin]:
    server = StorageStandin(KEY, tmp_path / "server")
    await server.start()
    yield server
    await server.stop()


def supabase(server: StorageStandin, **kw: Any) -> SupabaseStorage:
    return SupabaseStorage(server.base_url, KEY, "outputs", public=False, signed_url_ttl_s=60, retry_wait_s=0.01, **kw)


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def offsets(server: StorageStandin) -> list[int]:
    return [int(p.headers["Upload-Offset"]) for p in server.calls("PATCH")]


async def test_a_chunk_cut_mid_body_resumes_at_the_servers_offset(standin: StorageStandin, tmp_path: Path) -> None:
    src = tmp_path / "long.mp4"
    size = 3 * TUS_CHUNK + 11
    sha = random_file(src, size)
    standin.fail("PATCH", nth=2, keep_bytes=MiB + 5, cut=True)
    storage = supabase(standin)
    try:
        obj = await storage.upload(src, DEST)
    finally:
        await storage.aclose()
    assert obj.sha256 == sha and obj.bytes == size
    assert standin.object_path("outputs", DEST).read_bytes() == src.read_bytes()
    assert offsets(standin) == [0, TUS_CHUNK, TUS_CHUNK + MiB + 5, 2 * TUS_CHUNK + MiB + 5]
    assert len(standin.calls("HEAD")) == 1 and len(standin.calls("POST", "/upload/resumable")) == 1


class Recorder:
    """A journal's persist callback that remembers what it was given (what a checkpoint would hold)."""

    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    async def __call__(self, entries: dict[str, Any]) -> None:
        self.saved.append(entries)


async def test_a_new_process_resumes_the_journalled_upload_of_the_same_file(
    standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "render.mp4"
    size = 4 * TUS_CHUNK + 3
    sha = random_file(src, size)
    first_run = Recorder()
    standin.fail("PATCH", nth=3, keep_bytes=2 * MiB, cut=True)
    dying = supabase(standin, retry_attempts=1)  # the attempt ends at the first cut, like a killed worker
    try:
        with pytest.raises(StorageUnavailable):
            await dying.upload(src, DEST, sha256=sha, journal=UploadJournal(persist=first_run))
    finally:
        await dying.aclose()
    [entry] = [e[DEST] for e in first_run.saved]  # saved once, as soon as the upload existed
    assert entry["size"] == size and entry["sha256"] == sha and entry["url"].startswith(standin.base_url)
    held = 2 * TUS_CHUNK + 2 * MiB
    assert [u.offset for u in standin.uploads.values()] == [held]

    second_run = Recorder()
    fresh = supabase(standin)
    try:
        obj = await fresh.upload(src, DEST, journal=UploadJournal({DEST: entry}, second_run))
    finally:
        await fresh.aclose()
    assert obj.sha256 == sha and obj.bytes == size
    assert standin.object_path("outputs", DEST).read_bytes() == src.read_bytes()
    assert len(standin.calls("POST", "/upload/resumable")) == 1  # no second upload was created
    assert offsets(standin)[3:] == [held, held + TUS_CHUNK]
    sent = sum(p.body_bytes for p in standin.calls("PATCH")[3:])
    assert sent == size - held  # only the rest crossed the network
    assert second_run.saved == [{}]  # forgotten once done


async def test_another_file_at_the_same_path_starts_a_new_upload(standin: StorageStandin, tmp_path: Path) -> None:
    old, new = tmp_path / "old.mp4", tmp_path / "new.mp4"
    random_file(old, TUS_CHUNK + 1)
    sha = random_file(new, TUS_CHUNK + 1)  # same size, other bytes (a re-render)
    journal = UploadJournal()
    standin.fail("PATCH", nth=1, keep_bytes=MiB, cut=True)
    dying = supabase(standin, retry_attempts=1)
    try:
        with pytest.raises(StorageUnavailable):
            await dying.upload(old, DEST, journal=journal)
        assert journal.get(DEST) is not None
        obj = await dying.upload(new, DEST, journal=journal)
    finally:
        await dying.aclose()
    assert obj.sha256 == sha
    assert standin.object_path("outputs", DEST).read_bytes() == new.read_bytes()
    assert len(standin.calls("POST", "/upload/resumable")) == 2 and not standin.calls("HEAD")
    assert journal.entries == {}


async def test_an_expired_upload_starts_over(standin: StorageStandin, tmp_path: Path) -> None:
    src = tmp_path / "a.mp4"
    sha = random_file(src, TUS_CHUNK + 9)
    journal = UploadJournal()
    standin.fail("PATCH", nth=1, keep_bytes=MiB, cut=True)
    storage = supabase(standin, retry_attempts=1)
    try:
        with pytest.raises(StorageUnavailable):
            await storage.upload(src, DEST, journal=journal)
        standin.uploads.clear()  # the server dropped it (Supabase expires unfinished uploads)
        obj = await storage.upload(src, DEST, journal=journal)
    finally:
        await storage.aclose()
    assert obj.sha256 == sha and standin.object_path("outputs", DEST).read_bytes() == src.read_bytes()
    assert [c.status for c in standin.calls("HEAD")] == [404]
    assert offsets(standin)[-2:] == [0, TUS_CHUNK]


async def test_a_journal_entry_pointing_elsewhere_never_gets_the_key(standin: StorageStandin, tmp_path: Path) -> None:
    # a checkpoint is part of the task row: an entry naming another server is ignored, not contacted
    other = StorageStandin("another-key", tmp_path / "elsewhere")
    await other.start()
    src = tmp_path / "a.mp4"
    sha = random_file(src, TUS_CHUNK + 5)
    forged = {"url": f"{other.base_url}/storage/v1/upload/resumable/x", "bucket": "outputs",
              "size": TUS_CHUNK + 5, "sha256": sha}  # fmt: skip
    storage = supabase(standin)
    try:
        obj = await storage.upload(src, DEST, journal=UploadJournal({DEST: forged}))
    finally:
        await storage.aclose()
        await other.stop()
    assert obj.sha256 == sha and not other.requests
    assert len(standin.calls("POST", "/upload/resumable")) == 1


# --- through the task checkpoint, in a real queue -----------------------------------------------------------


async def claim_one(store: TaskStore) -> Task:
    [task] = await store.claim("w1", None, 1, 60)
    return task


def context(store: TaskStore, task: Task, storage: Any, tmp_path: Path) -> TaskContext:
    async def checkpoint(state: dict[str, Any]) -> None:
        await store.update_progress(task.task_id, task.lease_token or "", None, state)

    async def progress(_p: dict[str, Any]) -> None:
        return None

    return TaskContext(
        task=task,
        settings=load_settings({}),
        engine=None,
        storage=storage,
        fetch=None,  # type: ignore[arg-type]
        work_dir=tmp_path,
        progress=progress,
        checkpoint=checkpoint,
        cancel=asyncio.Event(),
    )


async def test_the_upload_url_survives_a_restart_in_the_task_checkpoint(
    standin: StorageStandin, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, _ = await make_store("sqlite", request, tmp_path)
    try:
        await store.register_worker(WorkerInfo("w1", "host", 1, "test", ("comfy",)))
        tid = (await store.enqueue(NewTask("comfy", {"workflow": {}}, max_attempts=3))).task_id
        src = tmp_path / "render.mp4"
        size = 3 * TUS_CHUNK + 1
        sha = random_file(src, size)

        first = await claim_one(store)
        dying = supabase(standin, retry_attempts=1)
        ctx = context(store, first, dying, tmp_path)
        await ctx.checkpoint({"chain": "step 3 done"})  # the handler's own state, saved before the upload
        standin.fail("PATCH", nth=2, keep_bytes=3 * MiB, cut=True)
        with pytest.raises(StorageUnavailable):
            await dying.upload(src, ctx.storage_path("render.mp4"), sha256=sha, journal=ctx.uploads)
        await dying.aclose()
        saved = (await store.get_task(tid)).checkpoint
        assert saved["chain"] == "step 3 done"
        assert saved[UPLOADS_KEY][f"comfy/{tid}/render.mp4"]["sha256"] == sha
        await ctx.checkpoint({"chain": "step 3 done", "note": "saved after the upload began"})
        assert UPLOADS_KEY in (await store.get_task(tid)).checkpoint  # the handler's save keeps the entry

        # the worker restarts: the task goes back to the queue and is claimed again, by a new process
        await store.release(tid, first.lease_token or "")
        second = await claim_one(store)
        assert second.lease_token != first.lease_token
        fresh = supabase(standin)
        ctx2 = context(store, second, fresh, tmp_path)
        obj = await fresh.upload(src, ctx2.storage_path("render.mp4"), journal=ctx2.uploads)
        await fresh.aclose()
        assert obj.sha256 == sha
        assert standin.object_path("outputs", f"comfy/{tid}/render.mp4").read_bytes() == src.read_bytes()
        assert len(standin.calls("POST", "/upload/resumable")) == 1
        assert offsets(standin)[2] == TUS_CHUNK + 3 * MiB  # the restart picked up where the cut left it
        final = (await store.get_task(tid)).checkpoint
        assert final == {"chain": "step 3 done", "note": "saved after the upload began"}
    finally:
        await store.close()


# --- hashed once --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "supabase-simple", "supabase-tus"])
async def test_a_known_digest_is_used_as_is(backend: str, standin: StorageStandin, tmp_path: Path) -> None:
    src = tmp_path / "out.png"
    real = random_file(src, TUS_CHUNK + 1 if backend == "supabase-tus" else 200_000)
    storage: Any = LocalStorage(tmp_path / "store") if backend == "local" else supabase(standin)
    try:
        # a digest the caller computed while downloading is trusted, not recomputed: the stand-in value proves
        # the file was not hashed again
        given = "ab" * 32
        obj = await storage.upload(src, DEST, sha256=given)
        assert obj.sha256 == given and obj.bytes == src.stat().st_size
        assert (await storage.upload(src, DEST)).sha256 == real  # without one, it is computed
    finally:
        await storage.aclose()
    stored = (tmp_path / "store" / DEST) if backend == "local" else standin.object_path("outputs", DEST)
    assert stored.read_bytes() == src.read_bytes()
