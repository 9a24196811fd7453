"""The storage interface every backend implements, and the helpers they share.

A :class:`Storage` keeps task outputs (and may serve task inputs) under paths that callers build as
``"{task_type}/{task_key}/{filename}"``. Every transfer streams between disk and the backend with bounded
memory and computes the SHA-256 on the way, unless the caller already has it (then the file is read once).
Backends raise only :class:`~comfy_worker.errors.StorageRejected` (permanent: bad path, bucket missing,
forbidden, too large) and
:class:`~comfy_worker.errors.StorageUnavailable` (retryable: network error or 5xx after retries).
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from comfy_worker.errors import StorageRejected, StorageUnavailable
from comfy_worker.logs import get_logger

log = get_logger(__name__)

# Types Python's table misses or gets wrong on slim images; checked before mimetypes.
_EXTRA_TYPES = {
    ".webp": "image/webp",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".gif": "image/gif",
    ".flac": "audio/flac",
    ".opus": "audio/opus",
    ".latent": "application/octet-stream",
    ".safetensors": "application/octet-stream",
}


@dataclass(frozen=True)
class StoredObject:
    """One object as stored: where it lives, how to fetch it, and what it contains."""

    path: str
    url: str
    bytes: int
    sha256: str
    content_type: str


class UploadJournal:
    """Where resumable uploads record how to resume: ``dest_path → {url, size, sha256, …}``.

    A backend saves an entry once an upload exists on the server and forgets it when the upload is done; a
    later attempt (another process, another machine) that uploads the same file to the same path finds the
    entry and resumes instead of starting over. Storage does not know where entries are kept: ``persist`` is
    called with every entry after each change (the daemon keeps them in the task's checkpoint)."""

    def __init__(
        self,
        entries: dict[str, dict[str, Any]] | None = None,
        persist: Callable[[dict[str, dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> None:
        self.entries: dict[str, dict[str, Any]] = {
            str(k): dict(v) for k, v in (entries or {}).items() if isinstance(v, dict)
        }
        self._persist = persist

    def get(self, dest_path: str) -> dict[str, Any] | None:
        return self.entries.get(dest_path)

    async def save(self, dest_path: str, entry: dict[str, Any]) -> None:
        self.entries[dest_path] = dict(entry)
        if self._persist is not None:
            await self._persist(dict(self.entries))

    async def forget(self, dest_path: str) -> None:
        if self.entries.pop(dest_path, None) is not None and self._persist is not None:
            await self._persist(dict(self.entries))


@runtime_checkable
class Storage(Protocol):
    """Output storage. Implementations: :class:`~comfy_worker.storage.local.LocalStorage`,
    :class:`~comfy_worker.storage.supabase.SupabaseStorage`."""

    async def check(self) -> None:
        """Check the destination is usable (bucket exists, directory writable); else StorageRejected."""
        ...

    async def upload(
        self,
        local_path: Path,
        dest_path: str,
        *,
        content_type: str | None = None,
        sha256: str | None = None,
        journal: UploadJournal | None = None,
    ) -> StoredObject:
        """Stream ``local_path`` to ``dest_path`` (overwriting), returning what was stored.

        ``sha256``: the file's digest when the caller already has it (outputs are hashed while they download
        from ComfyUI); the backend then does not hash the file again. ``journal``: where a resumable upload
        keeps its URL, so an attempt that dies half-way is resumed by the next one (backends without
        resumable uploads ignore it)."""
        ...

    async def download(self, storage_path: str, local_path: Path) -> Path:
        """Stream the object at ``storage_path`` to ``local_path`` (written atomically); return the path."""
        ...

    async def delete(self, paths: list[str]) -> None:
        """Remove these objects; paths that do not exist are ignored."""
        ...

    async def url_for(self, path: str) -> str:
        """A URL a user can fetch the object from (public, signed, or file://)."""
        ...

    async def discard_uploads(self, journal: UploadJournal) -> None:
        """The task whose journal this is will not be attempted again (cancelled, or failed for good): give up
        the resumable uploads it names, so none is left open on the server, and drop them from ``journal``
        (in memory only: the task's row is final, nothing is written back). Never raises for an upload that
        cannot be given up (it is logged; the start-up sweep or the server's expiry ends it)."""
        ...

    async def aclose(self) -> None:
        """Release clients this storage owns."""
        ...


def validate_path(path: str) -> str:
    """Check an object path built by a caller: relative, no ``..``, no empty segments, no backslashes.

    Returns the path unchanged; raises StorageRejected naming the problem."""
    problem = None
    if not path or not path.strip():
        problem = "is empty"
    elif path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        problem = "is absolute"
    elif "\\" in path or "\x00" in path:
        problem = "contains a backslash or NUL"
    elif any(seg in ("", ".", "..") for seg in path.split("/")):
        problem = "contains an empty, '.' or '..' segment"
    elif posixpath.normpath(path) != path:
        problem = "is not normalised"
    if problem:
        raise StorageRejected(
            f"storage path {path!r} {problem}: use a relative path like 'comfy/<task_id>/<filename>'",
            details={"path": path},
        )
    return path


def retrying(attempts: int, wait_s: float) -> AsyncRetrying:
    """Every store's retry of a transient fault: StorageUnavailable only, ``attempts`` tries in all, exponential
    waits from ``wait_s`` capped at 30 s, each retry logged as ``storage_retry``; the last error is raised."""
    return AsyncRetrying(
        retry=retry_if_exception_type(StorageUnavailable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=wait_s, max=30),
        reraise=True,
        before_sleep=lambda rs: log.warning(
            "storage_retry", attempt=rs.attempt_number, error=str(rs.outcome.exception())
        ),
    )


def upload_source(local_path: str | Path, dest_path: str, content_type: str | None) -> tuple[Path, int, str]:
    """What every remote upload starts with: the destination checked, the file's size (StorageRejected when the
    file is missing) and its content type (given, else guessed from ``dest_path``)."""
    validate_path(dest_path)
    local_path = Path(local_path)
    try:
        size = local_path.stat().st_size
    except FileNotFoundError as exc:
        raise StorageRejected(
            f"cannot upload {str(local_path)!r}: the file does not exist", details={"path": dest_path}
        ) from exc
    return local_path, size, content_type or guess_content_type(dest_path)


def guess_content_type(name: str) -> str:
    """The MIME type for a file name, ``application/octet-stream`` when unknown."""
    suffix = Path(name).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"
