"""Output storage in a Supabase Storage bucket, spoken to directly over its REST API with httpx.

Not supabase-py's storage client: it reads whole files into memory. Here every transfer streams from or to
disk with bounded memory:

* files up to 6 MiB: one ``POST /storage/v1/object/{bucket}/{path}`` (``x-upsert: true``) whose body is
  read from disk block by block;
* larger files: Supabase's resumable endpoint ``/storage/v1/upload/resumable`` (TUS 1.0.0). One POST
  creates the upload (``Upload-Length``, ``Upload-Metadata`` with base64 bucketName / objectName /
  contentType / cacheControl), then PATCHes of exactly 6 MiB (Supabase's required chunk size; the last may
  be shorter) carry ``Upload-Offset``. After a failed PATCH the offset the server really holds is read with
  HEAD and the upload resumes from there. Given an :class:`~comfy_worker.storage.base.UploadJournal`, the
  upload URL (with the file's size and SHA-256) is saved there as soon as it exists, and an upload of the
  same file to the same path by a later attempt (after a crash or a restart) resumes at the server's offset
  instead of starting over; a different file, an expired upload or a size mismatch starts over.

A digest the caller already has (``sha256=``) is trusted: the file is then streamed without hashing it.

URLs are public (``/object/public/{bucket}/{path}``) or signed (``POST /object/sign/{bucket}/{path}``) per
``STORAGE_PUBLIC``. Network errors and 5xx are retried with tenacity and end as StorageUnavailable; 4xx
become StorageRejected carrying the server's message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin

import httpx
from tenacity import AsyncRetrying

from comfy_worker.errors import StorageRejected, StorageUnavailable
from comfy_worker.filehash import READ_BLOCK, file_sha256
from comfy_worker.logs import get_logger, register_secret
from comfy_worker.storage.base import (
    StoredObject,
    UploadJournal,
    retrying,
    upload_source,
    validate_path,
)

log = get_logger(__name__)

MiB = 1024 * 1024
SIMPLE_UPLOAD_MAX = 6 * MiB  # larger files go through the resumable endpoint
TUS_CHUNK = 6 * MiB  # Supabase requires 6 MiB chunks (all but the last)
TUS_VERSION = "1.0.0"


class _OffsetConflict(StorageUnavailable):
    """A PATCH was refused with 409: our offset is not the server's. Retried after asking HEAD."""


def _server_message(resp: httpx.Response) -> tuple[str, str | None]:
    """(message, statusCode field) from a Supabase Storage error body, falling back to the raw text."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text.strip()[:300] or resp.reason_phrase), None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or str(body)
        code = body.get("statusCode")
        return str(message), (str(code) if code is not None else None)
    return str(body)[:300], None


def _is_not_found(resp: httpx.Response) -> bool:
    """Supabase answers a missing bucket/object with 404, or (older servers) 400 and ``statusCode: "404"``."""
    return resp.status_code == 404 or _server_message(resp)[1] == "404"


def _tus_metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


class SupabaseStorage:
    """A :class:`~comfy_worker.storage.base.Storage` on one bucket of a Supabase project."""

    def __init__(
        self,
        url: str,
        key: str,
        bucket: str,
        *,
        public: bool,
        signed_url_ttl_s: int,
        http: httpx.AsyncClient | None = None,
        retry_attempts: int = 5,
        retry_wait_s: float = 0.5,
        cache_control: str = "3600",
    ) -> None:
        self._base = url.rstrip("/") + "/storage/v1"
        self.bucket = bucket
        self.public = public
        self.signed_url_ttl_s = signed_url_ttl_s
        self.cache_control = cache_control
        self._headers = {"apikey": key, "Authorization": f"Bearer {key}"}
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=15.0))
        self._owns_http = http is None
        self._retry_attempts = retry_attempts
        self._retry_wait_s = retry_wait_s
        register_secret(key)

    # --- plumbing ------------------------------------------------------------------------------------------

    def _retrying(self) -> AsyncRetrying:
        return retrying(self._retry_attempts, self._retry_wait_s)

    def _object_url(self, kind: str, path: str) -> str:
        prefix = f"{self._base}/object/{kind}/" if kind else f"{self._base}/object/"
        return f"{prefix}{quote(self.bucket)}/{quote(path, safe='/')}"

    def _rejected(self, resp: httpx.Response, what: str, path: str | None = None) -> StorageRejected:
        message, code = _server_message(resp)
        return StorageRejected(
            f"Supabase Storage refused {what}: HTTP {resp.status_code}: {message}",
            details={"status": resp.status_code, "status_code": code, "message": message, "path": path},
        )

    def _check_status(self, resp: httpx.Response, what: str, path: str | None = None) -> None:
        if resp.status_code >= 500:
            message, _ = _server_message(resp)
            raise StorageUnavailable(
                f"Supabase Storage failed {what}: HTTP {resp.status_code}: {message}",
                details={"status": resp.status_code, "path": path},
            )
        if resp.status_code >= 400:
            raise self._rejected(resp, what, path)

    async def _request(self, method: str, url: str, what: str, path: str | None = None, **kw: Any) -> httpx.Response:
        """One request, mapped at the boundary: transport error or 5xx → StorageUnavailable,
        4xx → StorageRejected."""
        headers = {**self._headers, **kw.pop("headers", {})}
        try:
            resp = await self._http.request(method, url, headers=headers, **kw)
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"Supabase Storage unreachable during {what}: {type(exc).__name__}: {exc}",
                details={"path": path},
            ) from exc
        self._check_status(resp, what, path)
        return resp

    # --- Storage protocol ----------------------------------------------------------------------------------

    async def check(self) -> None:
        url = f"{self._base}/bucket/{quote(self.bucket)}"
        try:
            async for attempt in self._retrying():
                with attempt:
                    resp = await self._request("GET", url, f"reading bucket {self.bucket!r}")
        except StorageRejected as exc:
            status = exc.details.get("status")
            if status == 404 or exc.details.get("status_code") == "404":
                raise StorageRejected(
                    f"bucket {self.bucket!r} does not exist in Supabase Storage: create it or set STORAGE_BUCKET",
                    details=exc.details,
                ) from exc
            if status in (401, 403):
                raise StorageRejected(
                    f"Supabase Storage refused the key (HTTP {status}): check SUPABASE_SERVICE_ROLE_KEY "
                    "(it must be the service_role key)",
                    details=exc.details,
                ) from exc
            raise
        info = resp.json()
        if self.public and isinstance(info, dict) and info.get("public") is False:
            raise StorageRejected(
                f"STORAGE_PUBLIC=true but bucket {self.bucket!r} is private, so public URLs would not work: "
                "make the bucket public or set STORAGE_PUBLIC=false (signed URLs)",
                details={"bucket": self.bucket},
            )

    async def upload(
        self,
        local_path: Path,
        dest_path: str,
        *,
        content_type: str | None = None,
        sha256: str | None = None,
        journal: UploadJournal | None = None,
    ) -> StoredObject:
        local_path, size, content_type = upload_source(local_path, dest_path, content_type)
        if size <= SIMPLE_UPLOAD_MAX:
            sha = await self._upload_simple(local_path, dest_path, size, content_type, sha256)
        else:
            sha = await self._upload_resumable(local_path, dest_path, size, content_type, sha256, journal)
        url = await self.url_for(dest_path)
        log.info(
            "storage_uploaded",
            backend="supabase",
            path=dest_path,
            bytes=size,
            resumable=size > SIMPLE_UPLOAD_MAX,
        )
        return StoredObject(path=dest_path, url=url, bytes=size, sha256=sha, content_type=content_type)

    async def _upload_simple(
        self, local_path: Path, dest_path: str, size: int, content_type: str, sha256: str | None
    ) -> str:
        url = self._object_url("", dest_path)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(size),
            "x-upsert": "true",
            "cache-control": f"max-age={self.cache_control}",
        }
        hasher = _RangeHasher(sha256)
        async for attempt in self._retrying():
            with attempt:
                hasher = _RangeHasher(sha256)
                with await asyncio.to_thread(open, local_path, "rb") as fh:
                    await self._request(
                        "POST",
                        url,
                        f"uploading {dest_path!r}",
                        dest_path,
                        headers=headers,
                        content=_stream_range(fh, 0, size, hasher),
                    )
        return hasher.hexdigest()

    async def _upload_resumable(
        self,
        local_path: Path,
        dest_path: str,
        size: int,
        content_type: str,
        sha256: str | None,
        journal: UploadJournal | None,
    ) -> str:
        location, offset = None, 0
        if journal is not None:
            if sha256 is None:  # a resume must know it sends the rest of the same file: one read to hash it
                sha256 = await asyncio.to_thread(file_sha256, local_path)
            location, offset = await self._resume_point(journal, dest_path, size, sha256)
        if location is None:
            location = await self._tus_create(dest_path, size, content_type)
            if journal is not None:
                entry = {"url": location, "bucket": self.bucket, "size": size, "sha256": sha256}
                await journal.save(dest_path, entry)
        hasher = _RangeHasher(sha256)
        hasher.skip_to(offset)  # resumed: an earlier attempt sent these bytes of this same file
        with await asyncio.to_thread(open, local_path, "rb") as fh:
            while offset < size:
                resync = False
                async for attempt in self._retrying():
                    with attempt:
                        if resync:
                            offset = await self._tus_offset(location, dest_path)
                            resync = False
                            if offset >= size:
                                break
                        length = min(TUS_CHUNK, size - offset)
                        resync = True  # if this PATCH fails, ask the server where we are
                        offset = await self._tus_patch(location, offset, length, fh, hasher, dest_path)
                        resync = False
        if hasher.upto != size:  # only possible if the server claimed bytes we never sent
            raise StorageRejected(f"resumable upload of {dest_path!r} ended out of step", details={"path": dest_path})
        if journal is not None:
            await journal.forget(dest_path)
        return hasher.hexdigest()

    async def _resume_point(
        self, journal: UploadJournal, dest_path: str, size: int, sha256: str
    ) -> tuple[str | None, int]:
        """(upload URL, offset the server holds) of a journalled upload of this very file, or (None, 0)."""
        entry = journal.get(dest_path)
        if not entry:
            return None, 0
        same = (entry.get("bucket"), entry.get("size"), entry.get("sha256")) == (self.bucket, size, sha256)
        url = entry.get("url")
        # the entry comes back from the task row: our key goes only to this project's own upload endpoint
        ours = isinstance(url, str) and url.startswith(f"{self._base}/upload/resumable/")
        if not same or not ours:
            log.info("storage_resume_skipped", path=dest_path, reason="another file" if ours else "not our URL")
            await journal.forget(dest_path)
            return None, 0
        try:
            async for attempt in self._retrying():
                with attempt:
                    offset = await self._tus_offset(url, dest_path, expect_length=size)
        except StorageRejected as exc:  # expired or finished (404/410), or not ours any more: start over
            log.info("storage_resume_skipped", path=dest_path, reason=str(exc))
            await journal.forget(dest_path)
            return None, 0
        log.info("storage_upload_resumed", path=dest_path, offset=offset, bytes=size)
        return url, offset

    async def _tus_create(self, dest_path: str, size: int, content_type: str) -> str:
        create_headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Length": str(size),
            "Upload-Metadata": _tus_metadata(
                bucketName=self.bucket,
                objectName=dest_path,
                contentType=content_type,
                cacheControl=self.cache_control,
            ),
            "x-upsert": "true",
            "Content-Length": "0",
        }
        endpoint = f"{self._base}/upload/resumable"
        what = f"creating the resumable upload of {dest_path!r}"
        async for attempt in self._retrying():
            with attempt:
                try:
                    resp = await self._request("POST", endpoint, what, dest_path, headers=create_headers)
                except StorageRejected as exc:
                    if exc.details.get("status") == 409:  # advisory lock held by a concurrent upload: wait
                        raise StorageUnavailable(str(exc), details=exc.details) from exc
                    raise
        location = resp.headers.get("Location")
        if not location:
            raise StorageRejected(f"Supabase Storage gave no Location for {what}", details={"path": dest_path})
        return urljoin(endpoint, location)

    async def _tus_patch(
        self, location: str, offset: int, length: int, fh: BinaryIO, hasher: _RangeHasher, dest_path: str
    ) -> int:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length),
        }
        try:
            resp = await self._request(
                "PATCH",
                location,
                f"uploading {dest_path!r} at offset {offset}",
                dest_path,
                headers=headers,
                content=_stream_range(fh, offset, length, hasher),
            )
        except StorageRejected as exc:
            if exc.details.get("status") == 409:
                raise _OffsetConflict(str(exc), details=exc.details) from exc
            raise
        return int(resp.headers.get("Upload-Offset", offset + length))

    async def _tus_offset(self, location: str, dest_path: str, *, expect_length: int | None = None) -> int:
        resp = await self._request(
            "HEAD",
            location,
            f"reading the offset of {dest_path!r}",
            dest_path,
            headers={"Tus-Resumable": TUS_VERSION},
        )
        try:
            offset = int(resp.headers["Upload-Offset"])
        except (KeyError, ValueError) as exc:
            raise StorageUnavailable(
                f"Supabase Storage sent no Upload-Offset for {dest_path!r}", details={"path": dest_path}
            ) from exc
        length = resp.headers.get("Upload-Length")
        if expect_length is not None and (offset > expect_length or (length and length != str(expect_length))):
            raise StorageRejected(
                f"the resumable upload of {dest_path!r} is {length} bytes at offset {offset}, not this file's "
                f"{expect_length}",
                details={"path": dest_path},
            )
        return offset

    async def download(self, storage_path: str, local_path: Path) -> Path:
        validate_path(storage_path)
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.part")
        url = self._object_url("", storage_path)
        what = f"downloading {storage_path!r}"
        try:
            async for attempt in self._retrying():
                with attempt:
                    await self._download_once(url, tmp, what, storage_path)
        except StorageRejected as exc:
            tmp.unlink(missing_ok=True)
            if exc.details.get("status") == 404 or exc.details.get("status_code") == "404":
                raise StorageRejected(
                    f"storage object {storage_path!r} does not exist in bucket {self.bucket!r}",
                    details=exc.details,
                ) from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, local_path)
        return local_path

    async def _download_once(self, url: str, tmp: Path, what: str, path: str) -> None:
        try:
            async with self._http.stream("GET", url, headers=self._headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    self._check_status(resp, what, path)
                with await asyncio.to_thread(open, tmp, "wb") as out:
                    async for block in resp.aiter_bytes(READ_BLOCK):
                        await asyncio.to_thread(out.write, block)
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"Supabase Storage unreachable during {what}: {type(exc).__name__}: {exc}",
                details={"path": path},
            ) from exc

    async def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        for p in paths:
            validate_path(p)
        url = f"{self._base}/object/{quote(self.bucket)}"
        async for attempt in self._retrying():
            with attempt:
                await self._request("DELETE", url, f"deleting {len(paths)} objects", json={"prefixes": paths})

    async def url_for(self, path: str) -> str:
        validate_path(path)
        if self.public:
            return self._object_url("public", path)
        async for attempt in self._retrying():
            with attempt:
                resp = await self._request(
                    "POST",
                    self._object_url("sign", path),
                    f"signing a URL for {path!r}",
                    path,
                    json={"expiresIn": self.signed_url_ttl_s},
                )
        body = resp.json()
        signed = body.get("signedURL") or body.get("signedUrl") if isinstance(body, dict) else None
        if not signed:
            raise StorageRejected(f"Supabase Storage returned no signed URL for {path!r}", details={"path": path})
        return signed if signed.startswith(("http://", "https://")) else f"{self._base}/{signed.lstrip('/')}"

    async def discard_uploads(self, journal: UploadJournal) -> None:
        # Supabase expires an unfinished TUS upload by itself (after 24 h) and bills nothing for it meanwhile
        return None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


class _RangeHasher:
    """SHA-256 of a file sent in ranges that may repeat after a resume: each byte is hashed once, in order.

    Given the digest already (``known``), it only tracks how far the bytes sent reach and hashes nothing."""

    def __init__(self, known: str | None = None) -> None:
        self._digest = hashlib.sha256()
        self._known = known
        self.upto = 0  # bytes [0, upto) are in the digest (or, with a known digest, were sent)

    def feed(self, pos: int, block: bytes) -> None:
        end = pos + len(block)
        if self._known is not None:
            self.upto = max(self.upto, end) if pos <= self.upto else self.upto
        elif pos <= self.upto < end:
            self._digest.update(memoryview(block)[self.upto - pos :])
            self.upto = end

    def skip_to(self, offset: int) -> None:
        """Bytes before ``offset`` were sent by an earlier attempt (only meaningful with a known digest)."""
        if self._known is not None:
            self.upto = max(self.upto, offset)

    def hexdigest(self) -> str:
        return self._known if self._known is not None else self._digest.hexdigest()


def _read_at(fh: BinaryIO, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return fh.read(length)


async def _stream_range(fh: BinaryIO, start: int, length: int, hasher: _RangeHasher) -> AsyncIterator[bytes]:
    """Bytes [start, start+length) of the file, block by block (read in a thread), hashed as they go."""
    pos, end = start, start + length
    while pos < end:
        block = await asyncio.to_thread(_read_at, fh, pos, min(READ_BLOCK, end - pos))
        if not block:
            raise StorageRejected(f"{getattr(fh, 'name', 'the file')} shrank while it was being uploaded")
        hasher.feed(pos, block)
        pos += len(block)
        yield block
