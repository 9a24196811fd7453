"""Check and sync the model files a manifest lists.

``check_models`` says, per file, ``ok`` / ``missing`` / ``corrupt`` / ``unverified`` (present, but the manifest
has no sha256 and no hash was recorded yet). Hashing is the slow part (a 14 GB file takes about a minute),
so a hash computed once is remembered with the file's size and mtime (state.py) and reused until either
changes; ``verify="quick"`` compares sizes only (what the worker does at start), ``verify="full"`` re-hashes.

``sync_models`` downloads what is missing or corrupt. Each file has its own lease lock on the volume: a
second pod skips files another pod is downloading, fetches the rest, then waits for those locks and finds
the files done — no file is ever downloaded twice at once. One failing file does not stop the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from comfy_worker.errors import ModelRejected, ModelsError
from comfy_worker.models_manifest.fetch import NullProgress, Progress, download, hash_file, resolve
from comfy_worker.models_manifest.lock import STALE_S, LeaseLock
from comfy_worker.models_manifest.manifest import Manifest, ModelEntry
from comfy_worker.models_manifest.state import ModelsState, Record

Verify = Literal["quick", "cached", "full"]


@dataclass(frozen=True)
class FileStatus:
    entry: ModelEntry
    state: str  # ok | missing | corrupt | unverified
    detail: str = ""

    @property
    def needs_sync(self) -> bool:
        return self.state in ("missing", "corrupt")


@dataclass(frozen=True)
class SyncOutcome:
    entry: ModelEntry
    outcome: str  # present | downloaded | done_elsewhere | manual | failed
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("present", "downloaded", "done_elsewhere")


def check_models(
    manifest: Manifest,
    models_dir: Path,
    *,
    groups: tuple[str, ...] | list[str] = (),
    verify: Verify = "cached",
    progress: Progress | None = None,
) -> list[FileStatus]:
    state = ModelsState(models_dir)
    records = state.records()
    return [
        check_one(e, models_dir, state, records, verify, progress or NullProgress()) for e in manifest.select(groups)
    ]


def check_one(
    entry: ModelEntry,
    models_dir: Path,
    state: ModelsState,
    records: dict[str, Record],
    verify: Verify,
    progress: Progress,
) -> FileStatus:
    path = entry.path(models_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        partial = state.partial_path(entry.relpath)
        detail = "" if entry.source is not None else "no source in the manifest: copy it into place"
        if partial.exists():
            detail = f"partial download of {partial.stat().st_size} bytes (sync resumes it)"
        return FileStatus(entry, "missing", detail)
    record = records.get(entry.relpath)
    recorded = record if record is not None and record.matches(st) else None
    if entry.size is not None and st.st_size != entry.size:
        return FileStatus(entry, "corrupt", f"{st.st_size} bytes, expected {entry.size}")
    if entry.size is None and record is not None and st.st_size != record.size:
        return FileStatus(entry, "corrupt", f"{st.st_size} bytes, but {record.size} when it was synced")
    if verify == "quick":
        return FileStatus(entry, "ok", "size checked" if entry.size else "present")
    want = entry.sha256 or (record.sha256 if record is not None else None)
    if want is None:
        return FileStatus(entry, "unverified", "no sha256 known yet: `models sync` records it")
    if recorded is not None and verify == "cached":
        got = recorded.sha256
    else:
        got = hash_file(path, progress, f"hashing {entry.relpath}")
    if got != want:
        whose = "the manifest" if entry.sha256 else "the hash recorded when it was synced"
        return FileStatus(entry, "corrupt", f"sha256 {got[:12]}… differs from {whose} ({want[:12]}…)")
    if recorded is None:
        state.record(entry.relpath, path, got, "verified by check")
    return FileStatus(entry, "ok", "sha256 verified")


def sync_models(
    manifest: Manifest,
    models_dir: Path,
    *,
    groups: tuple[str, ...] | list[str] = (),
    progress: Progress | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    stale_s: float = STALE_S,
    client_factory: Callable[[], httpx.Client] | None = None,
) -> list[SyncOutcome]:
    progress = progress or NullProgress()
    state = ModelsState(models_dir)
    records = state.records()
    outcomes: dict[str, SyncOutcome] = {}
    todo: list[ModelEntry] = []
    for entry in manifest.select(groups):
        status = check_one(entry, models_dir, state, records, "cached", progress)
        if status.state in ("ok", "unverified"):
            outcomes[entry.relpath] = SyncOutcome(entry, "present", status.detail)
        elif entry.source is None:
            outcomes[entry.relpath] = SyncOutcome(entry, "manual", f"{status.state}: copy it into place by hand")
        else:
            if status.state == "corrupt":
                progress.message(f"{entry.relpath}: corrupt ({status.detail}); replacing it")
            todo.append(entry)

    make_client = client_factory or _default_client
    with make_client() as client:
        deferred = []
        for entry in todo:
            lock = state.lock_for(entry.relpath, stale_s=stale_s)
            if lock.try_acquire():
                outcomes[entry.relpath] = _fetch_locked(
                    entry, models_dir, state, lock, client, progress, retries, backoff_s
                )
            else:
                deferred.append((entry, lock))
        for entry, lock in deferred:

            def tell(holder: dict[str, object], entry: ModelEntry = entry) -> None:
                who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
                progress.message(f"{entry.relpath}: waiting for the download lock held by {who}")

            lock.acquire(on_wait=tell)
            outcomes[entry.relpath] = _fetch_locked(
                entry, models_dir, state, lock, client, progress, retries, backoff_s, waited=True
            )
    return [outcomes[e.relpath] for e in manifest.select(groups)]


def _fetch_locked(
    entry: ModelEntry,
    models_dir: Path,
    state: ModelsState,
    lock: LeaseLock,
    client: httpx.Client,
    progress: Progress,
    retries: int,
    backoff_s: float,
    *,
    waited: bool = False,
) -> SyncOutcome:
    try:
        # someone else may have finished it while we waited (or between our check and the lock)
        status = check_one(entry, models_dir, state, state.records(), "cached", progress)
        if status.state in ("ok", "unverified"):
            return SyncOutcome(entry, "done_elsewhere" if waited else "present", status.detail)
        final = entry.path(models_dir)
        if status.state == "corrupt":
            final.unlink(missing_ok=True)
            state.forget(entry.relpath)
        resolved = resolve(entry)
        if entry.sha256 and resolved.sha256 and entry.sha256 != resolved.sha256:
            raise ModelRejected(
                f"{entry.relpath}: the manifest's sha256 {entry.sha256[:12]}… differs from the hub's "
                f"{resolved.sha256[:12]}… for {resolved.describe}: the file changed upstream or the manifest is "
                "wrong; nothing was downloaded"
            )
        partial = state.partial_path(entry.relpath)
        _check_space(entry, models_dir, partial, resolved.size)
        sha = download(
            entry,
            resolved,
            partial,
            client=client,
            progress=progress,
            expected_sha=entry.sha256,
            retries=retries,
            backoff_s=backoff_s,
            lost=lambda: lock.lost,
        )
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        state.record(entry.relpath, final, sha, resolved.describe)
        return SyncOutcome(entry, "downloaded", f"sha256 {sha}")
    except ModelsError as exc:
        return SyncOutcome(entry, "failed", str(exc))
    finally:
        with contextlib.suppress(OSError):
            lock.release()


def _check_space(entry: ModelEntry, models_dir: Path, partial: Path, resolved_size: int | None) -> None:
    size = entry.size or resolved_size
    if size is None:
        return
    have = partial.stat().st_size if partial.exists() else 0
    free = shutil.disk_usage(models_dir).free
    if size - have > free:
        raise ModelRejected(
            f"{entry.relpath}: needs {_gb(size - have)} more but the models volume has {_gb(free)} free; "
            "grow the volume or sync fewer groups (--group)"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def _default_client() -> httpx.Client:
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(30.0, read=120.0),
        headers={"User-Agent": "comfy-worker-models", "Accept-Encoding": "identity"},
    )
