"""Fetching task inputs to local files: URLs, base64 payloads, and objects in output storage.

URL downloads stream to disk with a size cap (``INPUT_MAX_BYTES``: Content-Length checked up front and bytes
counted while streaming), per-operation timeouts (``INPUT_TIMEOUT_S``: connect, and each read/write; a slow
but moving download is not cut off) and tenacity retries on network errors, 5xx and 429 only.

Server-side request forgery is refused (:mod:`comfy_worker.urlpolicy`): before connecting, the host is
resolved and every address it resolves to must be public (not loopback, private, link-local, multicast,
reserved, CGNAT or a cloud metadata endpoint), unless the host is in ``INPUT_URL_ALLOWLIST`` or
``ALLOW_PRIVATE_URLS=true``. The connection is then made to the address that was checked (the original host
name goes in the Host header and TLS SNI), so a DNS answer that changes between check and connect cannot
redirect us. Redirects are followed by hand, at most five, and each target is checked the same way. Only http
and https are fetched.

A retried download resumes: the bytes so far stay in ``.NAME.part`` and the retry asks for the rest with
``Range`` + ``If-Range`` (the first response's strong ETag or Last-Modified). Only a 206 whose Content-Range
starts where we asked and has the same total is appended; a 200 (the server ignores ranges, or the file
changed) starts over, and an unexpected range starts over on the next try. The finished size must equal the
Content-Length / Content-Range total, else the download counts as cut short and is retried.

Cloud metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200) stay refused even with
``ALLOW_PRIVATE_URLS=true``: only an explicit allow-list entry for the host opens them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
import posixpath
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from comfy_worker.config import OBJECT_STORE_SCHEMES, Settings
from comfy_worker.errors import ConfigError, InputRejected, InputUnavailable, StorageRejected, StorageUnavailable
from comfy_worker.logs import get_logger
from comfy_worker.storage.base import Storage
from comfy_worker.storage.objectstore import ObjectStorage, fetch_object_url
from comfy_worker.urlpolicy import display_url, prepare_request  # the URL policy, shared with webhooks

log = get_logger(__name__)

MAX_REDIRECTS = 5
WRITE_BLOCK = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_4XX = frozenset({408, 429})
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)

Fetcher = Callable[..., Awaitable[Path]]
RoomCheck = Callable[[int, str], None]  # (declared bytes, what) -> None, or raises DiskFull before the download


# --- policy: comfy_worker.urlpolicy (shared with webhook deliveries) ---


def safe_filename(name: str | None, default: str = "input") -> str:
    """A file name that is safe on any filesystem: the last path component, characters outside
    ``[A-Za-z0-9._-]`` replaced by ``_``, no leading dots, at most 150 characters (extension kept)."""
    base = posixpath.basename((name or "").replace("\\", "/"))
    base = _UNSAFE_CHARS.sub("_", base).strip("._") or default
    stem, dot, ext = base.rpartition(".")
    if dot and stem and len(ext) <= 16:
        return f"{stem[: 150 - len(ext) - 1]}.{ext}"
    return base[:150]


def filename_from_url(url: str) -> str:
    return safe_filename(unquote(urlsplit(url).path))


# --- fetching ---


@dataclass
class _Partial:
    """What earlier tries of one download left: bytes in ``tmp`` and how to ask for the rest."""

    tmp: Path
    validator: str | None = None  # strong ETag, else Last-Modified, of the response those bytes came from
    total: int | None = None  # the full size that response declared

    def held(self) -> int:
        """Bytes a retry may resume after (0 when they cannot be resumed safely)."""
        if self.validator is None:
            return 0
        try:
            return self.tmp.stat().st_size
        except FileNotFoundError:
            return 0

    def reset(self) -> None:
        self.tmp.unlink(missing_ok=True)
        self.validator, self.total = None, None


async def fetch_url(
    url: str,
    dest_dir: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    allowlist: tuple[str, ...] = (),
    allow_private: bool = False,
    filename: str | None = None,
    client: httpx.AsyncClient | None = None,
    retry_attempts: int = 4,
    retry_wait_s: float = 1.0,
    room: RoomCheck | None = None,
) -> Path:
    """Download ``url`` into ``dest_dir`` (as ``filename`` or the URL's last path segment, sanitised).

    A retry after a cut connection resumes with ``Range`` where the server allows it (206 with the
    Content-Range asked for; a 200 starts over), and the size is checked against Content-Length or the
    Content-Range total before the file is renamed into place.

    Raises InputRejected (permanent: policy, size, 4xx, bad URL) or InputUnavailable (after retries)."""
    dest_dir = Path(dest_dir)
    dest = dest_dir / safe_filename(filename or filename_from_url(url))
    if urlsplit(url).scheme.lower() in OBJECT_STORE_SCHEMES:
        await asyncio.to_thread(dest_dir.mkdir, parents=True, exist_ok=True)
        return await _fetch_object(url, dest, max_bytes, room)
    part = _Partial(dest.with_name(f".{dest.name}.part"))
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s))
    try:
        await asyncio.to_thread(dest_dir.mkdir, parents=True, exist_ok=True)
        part.reset()  # bytes of an unknown earlier download are never resumed
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(InputUnavailable),
            stop=stop_after_attempt(retry_attempts),
            wait=wait_exponential(multiplier=retry_wait_s, max=30),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "input_fetch_retry",
                url=display_url(url),
                attempt=rs.attempt_number,
                error=str(rs.outcome.exception()),
                resume_at=part.held(),
            ),
        ):
            with attempt:
                size = await _fetch_once(http, url, part, max_bytes, timeout_s, allowlist, allow_private, room)
        await asyncio.to_thread(os.replace, part.tmp, dest)
    except BaseException:
        part.reset()
        raise
    finally:
        if own_client:
            await http.aclose()
    log.info("input_fetched", url=display_url(url), path=str(dest), bytes=size)
    return dest


async def _fetch_object(url: str, dest: Path, max_bytes: int, room: RoomCheck | None) -> Path:
    """``s3://`` / ``gs://`` / ``az://`` inputs, read with the store's own credentials (storage errors become
    input errors)."""
    try:
        return await fetch_object_url(url, dest, max_bytes=max_bytes, room=room)
    except StorageRejected as exc:
        raise InputRejected(f"input URL {url}: {exc}", details=exc.details) from exc
    except StorageUnavailable as exc:
        raise InputUnavailable(f"input URL {url}: {exc}", details=exc.details) from exc
    except ConfigError as exc:
        raise InputRejected(f"input URL {url}: {exc}") from exc


async def _fetch_once(
    http: httpx.AsyncClient,
    url: str,
    part: _Partial,
    max_bytes: int,
    timeout_s: float,
    allowlist: tuple[str, ...],
    allow_private: bool,
    room: RoomCheck | None = None,
) -> int:
    current, origin = url, None
    offset = part.held()
    for _hop in range(MAX_REDIRECTS + 1):
        target, headers, extensions = await prepare_request(
            current, allowlist=allowlist, allow_private=allow_private, origin=origin
        )
        headers = {**headers, "Accept-Encoding": "identity"}  # sizes and ranges count the bytes on disk
        if offset:
            headers.update({"Range": f"bytes={offset}-", "If-Range": part.validator or ""})
        shown = display_url(current)
        try:
            async with http.stream(
                "GET",
                target,
                headers=headers,
                extensions=extensions,
                follow_redirects=False,
                timeout=timeout_s,
            ) as resp:
                if resp.status_code in _REDIRECTS and "location" in resp.headers:
                    origin, current = current, urljoin(current, resp.headers["location"])
                    continue
                start, total = _response_range(resp, offset, part, shown)
                if total is not None and total > max_bytes:
                    raise InputRejected(
                        f"input URL {shown} is {total} bytes, over INPUT_MAX_BYTES ({max_bytes})",
                        details={"url": shown, "bytes": total, "max_bytes": max_bytes},
                    )
                if room is not None and total is not None and total > start:
                    # the disk floor: refused before a byte is written
                    room(total - start, f"input URL {shown}")
                if start == 0:
                    part.validator, part.total = _validator(resp), total
                elif start:
                    log.info("input_fetch_resumed", url=shown, offset=start, total=total)
                size = await _stream_to(resp, part.tmp, start, max_bytes, shown)
                if total is not None and size != total:
                    raise InputUnavailable(
                        f"input URL {shown}: the connection ended after {size} of {total} bytes",
                        details={"url": shown, "bytes": size, "expected_bytes": total},
                    )
                return size
        except httpx.TransportError as exc:
            raise InputUnavailable(
                f"downloading input URL {shown} failed: {type(exc).__name__}: {exc}", details={"url": shown}
            ) from exc
    raise InputRejected(
        f"input URL {display_url(url)} redirected more than {MAX_REDIRECTS} times",
        details={"url": display_url(url)},
    )


def _response_range(resp: httpx.Response, offset: int, part: _Partial, shown: str) -> tuple[int, int | None]:
    """(where this body starts in the file, the file's full size if known) for a final response.

    A 206 must be exactly the range asked for, of the same size as before; anything else starts over."""
    status = resp.status_code
    if offset and status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        start = int(match.group(1)) if match else -1
        total = int(match.group(3)) if match and match.group(3) != "*" else None
        if start == offset and total is not None and total == part.total:
            return offset, total
        part.reset()
        raise InputUnavailable(
            f"input URL {shown} answered the range request with {resp.headers.get('content-range')!r} "
            f"(asked for bytes {offset}-); starting over",
            details={"url": shown},
        )
    if offset and status == 416:
        part.reset()
        raise InputUnavailable(f"input URL {shown} refused to resume at byte {offset}; starting over")
    _check_status(status, shown)
    if status == 206:  # a range we did not ask for
        raise InputRejected(f"input URL {shown} answered 206 to a plain GET", details={"url": shown})
    if offset:
        log.info("input_fetch_restarted", url=shown, offset=offset, reason=f"HTTP {status} to a range request")
    declared = resp.headers.get("content-length", "")
    return 0, int(declared) if declared.isdigit() else None


def _validator(resp: httpx.Response) -> str | None:
    """What a later range request sends as If-Range: a strong ETag, else Last-Modified; None when the server
    does not take ranges (then a retry starts over)."""
    if resp.headers.get("accept-ranges", "").strip().lower() == "none":
        return None
    etag = resp.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("last-modified")


def _check_status(status: int, shown: str) -> None:
    if status >= 500 or status in _RETRYABLE_4XX:
        raise InputUnavailable(
            f"input URL {shown} answered HTTP {status}", details={"url": shown, "status": status}
        )
    if status >= 400 or status < 200 or status in _REDIRECTS:
        raise InputRejected(
            f"input URL {shown} answered HTTP {status}", details={"url": shown, "status": status}
        )


async def _stream_to(resp: httpx.Response, tmp: Path, start: int, max_bytes: int, shown: str) -> int:
    """Write the body to ``tmp`` from byte ``start`` (0: a new file); the file's size afterwards. On a
    transport error the bytes so far stay, for a retry to resume after."""
    size = start
    pending = bytearray()  # written in WRITE_BLOCK batches; what arrived before a cut is written too
    with await asyncio.to_thread(open, tmp, "r+b" if start else "wb") as out:
        if start:
            await asyncio.to_thread(out.truncate, start)
            await asyncio.to_thread(out.seek, start)
        try:
            async for block in resp.aiter_bytes():
                size += len(block)
                if size > max_bytes:
                    raise InputRejected(
                        f"input URL {shown} is larger than INPUT_MAX_BYTES ({max_bytes})",
                        details={"url": shown, "max_bytes": max_bytes},
                    )
                pending += block
                if len(pending) >= WRITE_BLOCK:
                    await asyncio.to_thread(out.write, bytes(pending))
                    pending.clear()
        finally:
            if pending:
                await asyncio.to_thread(out.write, bytes(pending))
    return size


def decode_base64_input(data: str, dest_dir: Path, filename: str, max_bytes: int) -> Path:
    """Write a base64 payload (optionally a ``data:…;base64,`` URI) to ``dest_dir/filename``."""
    payload = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise InputRejected(
            f"base64 input {filename!r} decodes to about {len(payload) * 3 // 4} bytes, "
            f"over INPUT_MAX_BYTES ({max_bytes})"
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputRejected(f"base64 input {filename!r} is not valid base64: {exc}") from exc
    if len(raw) > max_bytes:
        raise InputRejected(
            f"base64 input {filename!r} is {len(raw)} bytes, over INPUT_MAX_BYTES ({max_bytes})"
        )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / safe_filename(filename)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.write_bytes(raw)
    os.replace(tmp, dest)
    return dest


async def fetch_storage_input(
    storage: Storage, storage_path: str, dest_dir: Path, max_bytes: int | None = None, *, filename: str | None = None
) -> Path:
    """Download an object from output storage as a task input (named ``filename``, else after the object);
    storage errors become input errors. An object store checks the object's size against ``max_bytes``
    (INPUT_MAX_BYTES) before writing a byte."""
    dest = Path(dest_dir) / safe_filename(filename or posixpath.basename(storage_path))
    try:
        if isinstance(storage, ObjectStorage):
            return await storage.download(storage_path, dest, max_bytes=max_bytes)
        return await storage.download(storage_path, dest)
    except StorageRejected as exc:
        raise InputRejected(f"input storage_path {storage_path!r}: {exc}", details=exc.details) from exc
    except StorageUnavailable as exc:
        raise InputUnavailable(f"input storage_path {storage_path!r}: {exc}", details=exc.details) from exc


async def fetch_source(
    spec: Mapping[str, Any], dest_dir: Path, *, fetch: Fetcher, storage: Storage, max_bytes: int,
    stem: str | None = None,
) -> Path:
    """One input given as ``{url | storage_path | base64[, filename]}``, as a local file under ``dest_dir``.
    Without ``filename`` the file is named ``stem`` plus the URL's / object's extension (or ``.bin`` for
    base64); without a ``stem`` either, after the URL or object (base64: ``input.bin``)."""
    filename = spec.get("filename")
    if spec.get("url"):
        if not filename and stem:
            filename = f"{stem}{Path(filename_from_url(spec['url'])).suffix}"
        return await fetch(spec["url"], dest_dir, filename=filename)
    if spec.get("storage_path"):
        if not filename and stem:
            filename = f"{stem}{Path(safe_filename(posixpath.basename(spec['storage_path']))).suffix}"
        return await fetch_storage_input(storage, spec["storage_path"], dest_dir, max_bytes, filename=filename)
    return decode_base64_input(spec["base64"], dest_dir, safe_filename(filename, f"{stem or 'input'}.bin"), max_bytes)


def settings_fetcher(
    settings: Settings, client: httpx.AsyncClient | None = None, room: RoomCheck | None = None
) -> Fetcher:
    """``fetch_url`` with the INPUT_* and ALLOW_PRIVATE_URLS settings bound: ``await fetch(url, dest)``;
    ``room`` checks a declared size against the disk floor."""
    return functools.partial(
        fetch_url,
        max_bytes=settings.input_max_bytes,
        timeout_s=settings.input_timeout_s,
        allowlist=settings.input_url_allowlist,
        allow_private=settings.allow_private_urls,
        client=client,
        room=room,
    )
