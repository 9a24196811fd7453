"""S3 multipart uploads we can resume: CreateMultipartUpload / UploadPart / ListParts / Complete / Abort.

obstore (Rust ``object_store``) streams multipart uploads well, but keeps the upload id inside its
``MultipartUpload``: a worker killed half-way leaves an upload nobody can continue or abort. For an upload that
must survive the process, the worker speaks the five S3 calls itself: httpx for the requests, AWS Signature
Version 4 (header form, ``UNSIGNED-PAYLOAD`` so a part is streamed from disk without hashing it first) for the
signature. The upload id is then the caller's to keep (in the task's checkpoint), ListParts says which parts
the server already holds, and an upload that cannot be finished is aborted.

Works with every S3-compatible service that takes SigV4 and multipart uploads: AWS S3, Cloudflare R2, MinIO,
Backblaze B2, Google Cloud Storage's XML API with HMAC keys, moto. Credentials and endpoint come from the
standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``); with no static key (instance roles), :func:`S3Multipart.from_env`
returns None and the caller falls back to obstore's (non-resumable) multipart upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying

from comfy_worker.errors import StorageRejected, StorageUnavailable
from comfy_worker.logs import get_logger, register_secret
from comfy_worker.storage.base import retrying

log = get_logger(__name__)

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_UNSIGNED = "UNSIGNED-PAYLOAD"
_RETRYABLE_CODES = frozenset({"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"})
BLOCK = 1024 * 1024
SHA256_META = "x-amz-meta-sha256"  # the file's digest, set on the object when its multipart upload is created


class NoSuchUpload(StorageRejected):
    """The multipart upload id is unknown to the server (finished, aborted or expired)."""


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    last_modified: dt.datetime | None = None


@dataclass(frozen=True)
class OpenUpload:
    key: str
    upload_id: str
    initiated: dt.datetime | None


def _q(value: str, safe: str = "") -> str:
    return quote(value, safe="-_.~" + safe)


def _find(node: ET.Element, name: str) -> str | None:
    found = node.find(f"{_NS}{name}")
    if found is None:
        found = node.find(name)
    return found.text if found is not None else None


def _findall(node: ET.Element, name: str) -> list[ET.Element]:
    return node.findall(f"{_NS}{name}") or node.findall(name)


def _xml(body: bytes) -> ET.Element:
    # the body comes from the S3 endpoint the operator configured, not from a task
    return ET.fromstring(body)  # noqa: S314


class S3Multipart:
    """The multipart calls for one bucket, signed with a static key."""

    def __init__(
        self,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        region: str = "us-east-1",
        endpoint: str | None = None,
        virtual_hosted: bool = False,
        http: httpx.AsyncClient | None = None,
        retry_attempts: int = 5,
        retry_wait_s: float = 0.5,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self._access_key, self._secret_key, self._token = access_key, secret_key, session_token
        if endpoint:
            base = endpoint.rstrip("/")
            self._base = base.replace("://", f"://{bucket}.", 1) if virtual_hosted else f"{base}/{_q(bucket)}"
        else:
            self._base = f"https://{bucket}.s3.{region}.amazonaws.com"
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=15.0))
        self._owns_http = http is None
        self._retry_attempts, self._retry_wait_s = retry_attempts, retry_wait_s
        for secret in (secret_key, session_token):
            register_secret(secret or "")

    @classmethod
    def from_env(cls, bucket: str, env: Mapping[str, str], **kw: Any) -> S3Multipart | None:
        """The client for ``bucket`` from the standard AWS variables; None without a static key."""
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            return None
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or None
        virtual = (env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST") or "").strip().lower() in ("1", "true", "yes")
        return cls(
            bucket,
            access_key=key,
            secret_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint=endpoint,
            virtual_hosted=virtual,
            **kw,
        )

    # --- signing --------------------------------------------------------------------------------------------

    def _signed(self, method: str, key: str, query: dict[str, str], headers: dict[str, str]) -> tuple[str, dict]:
        """(URL, headers) for one request, signed with SigV4 (unsigned payload)."""
        url = httpx.URL(f"{self._base}/{_q(key, '/')}" if key else f"{self._base}/")
        canonical_uri = url.raw_path.split(b"?", 1)[0].decode("ascii")
        canonical_query = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items()))
        now = dt.datetime.now(dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = url.netloc.decode("ascii")
        signed_headers = {"host": host, "x-amz-content-sha256": _UNSIGNED, "x-amz-date": amz_date}
        # S3 refuses x-amz-* headers left out of the signature (x-amz-meta-sha256 on CreateMultipartUpload)
        signed_headers.update({k.lower(): v for k, v in headers.items() if k.lower().startswith("x-amz-")})
        if self._token:
            signed_headers["x-amz-security-token"] = self._token
        names = sorted(signed_headers)
        canonical = "\n".join(
            [
                method,
                canonical_uri,
                canonical_query,
                "".join(f"{n}:{signed_headers[n].strip()}\n" for n in names),
                ";".join(names),
                _UNSIGNED,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signing_key = f"AWS4{self._secret_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        auth = (
            f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, SignedHeaders={';'.join(names)}, "
            f"Signature={signature}"
        )
        unsigned = {k: v for k, v in headers.items() if not k.lower().startswith("x-amz-")}
        out = {**unsigned, **{k: v for k, v in signed_headers.items() if k != "host"}, "Authorization": auth}
        full = f"{url}?{canonical_query}" if canonical_query else str(url)
        return full, out

    # --- requests -------------------------------------------------------------------------------------------

    def _retrying(self) -> AsyncRetrying:
        return retrying(self._retry_attempts, self._retry_wait_s)

    async def _request(
        self,
        method: str,
        key: str,
        what: str,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        content: Any = None,
    ) -> httpx.Response:
        url, signed = self._signed(method, key, query or {}, headers or {})
        try:
            resp = await self._http.request(method, url, headers=signed, content=content)
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"S3 unreachable during {what}: {type(exc).__name__}: {exc}", details={"key": key}
            ) from exc
        if resp.status_code < 300 and not (method == "POST" and b"<Error>" in resp.content[:512]):
            return resp
        code, message = _error(resp)
        details = {"status": resp.status_code, "code": code, "key": key}
        text = f"S3 refused {what}: HTTP {resp.status_code} {code}: {message}"
        if resp.status_code >= 500 or resp.status_code in (408, 429) or code in _RETRYABLE_CODES:
            raise StorageUnavailable(text, details=details)
        if code == "NoSuchUpload":
            raise NoSuchUpload(text, details=details)
        if code == "NoSuchBucket":
            raise StorageRejected(
                f"bucket {self.bucket!r} does not exist: create it or fix STORAGE_URL", details=details
            )
        if resp.status_code in (401, 403):
            raise StorageRejected(
                f"{text}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_REGION)",
                details=details,
            )
        raise StorageRejected(text, details=details)

    async def _retried(self, *args: Any, **kw: Any) -> httpx.Response:
        async for attempt in self._retrying():
            with attempt:
                return await self._request(*args, **kw)
        raise AssertionError("unreachable")  # pragma: no cover

    async def create(self, key: str, content_type: str, sha256: str | None = None) -> str:
        """A new multipart upload; ``sha256`` is kept as the object's ``x-amz-meta-sha256`` (what
        :meth:`stored_as` compares when a completion's answer was lost)."""
        headers = {"Content-Type": content_type}
        if sha256:
            headers[SHA256_META] = sha256
        resp = await self._retried("POST", key, f"creating the multipart upload of {key!r}", {"uploads": ""}, headers)
        upload_id = _find(_xml(resp.content), "UploadId")
        if not upload_id:
            raise StorageRejected(f"S3 returned no UploadId for {key!r}", details={"key": key})
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, path: Path, offset: int, size: int) -> Part:
        """Send bytes [offset, offset+size) of ``path`` as part ``number``, streamed from disk (retried whole)."""
        what = f"uploading part {number} of {key!r}"
        async for attempt in self._retrying():
            with attempt:
                resp = await self._request(
                    "PUT",
                    key,
                    what,
                    {"partNumber": str(number), "uploadId": upload_id},
                    {"Content-Length": str(size)},
                    _file_range(path, offset, size),
                )
        etag = resp.headers.get("ETag")
        if not etag:
            raise StorageUnavailable(f"S3 returned no ETag for {what}", details={"key": key})
        return Part(number, etag, size)

    async def list_parts(self, key: str, upload_id: str) -> dict[int, Part]:
        """The parts the server holds for this upload; NoSuchUpload when it is gone."""
        parts: dict[int, Part] = {}
        marker = "0"
        while True:
            query = {"uploadId": upload_id, "part-number-marker": marker}
            resp = await self._retried("GET", key, f"listing the parts of {key!r}", query)
            root = _xml(resp.content)
            for node in _findall(root, "Part"):
                number, etag, size = _find(node, "PartNumber"), _find(node, "ETag"), _find(node, "Size")
                if number and etag and size:
                    parts[int(number)] = Part(int(number), etag, int(size), _when(_find(node, "LastModified")))
            if (_find(root, "IsTruncated") or "false").lower() != "true":
                return parts
            marker = _find(root, "NextPartNumberMarker") or str(max(parts, default=0))

    async def complete(
        self, key: str, upload_id: str, parts: list[Part], *, size: int | None = None, sha256: str | None = None
    ) -> None:
        """CompleteMultipartUpload, retried. A retry answered NoSuchUpload may follow a try that did complete
        the upload but whose answer was lost on the way (a cut connection, a timeout): the object is then asked
        for, and accepted when its size (and ``x-amz-meta-sha256``, when ``sha256`` is given) are this upload's."""
        body = "<CompleteMultipartUpload>{}</CompleteMultipartUpload>".format(
            "".join(
                f"<Part><PartNumber>{p.number}</PartNumber><ETag>{p.etag}</ETag></Part>"
                for p in sorted(parts, key=lambda p: p.number)
            )
        ).encode()
        what = f"completing the multipart upload of {key!r}"
        tries = 0
        async for attempt in self._retrying():
            with attempt:
                tries += 1
                try:
                    await self._request(
                        "POST", key, what, {"uploadId": upload_id}, {"Content-Type": "application/xml"}, body
                    )
                    return
                except NoSuchUpload:
                    if tries == 1 or size is None or not await self.stored_as(key, size, sha256):
                        raise
                    log.info("storage_multipart_completion_confirmed", object_name=key, bytes=size, tries=tries)
                    return

    async def stored_as(self, key: str, size: int, sha256: str | None) -> bool:
        """Whether the object at ``key`` is ``size`` bytes (and carries ``x-amz-meta-sha256`` = ``sha256`` when
        given): the upload this worker meant is there."""
        url, signed = self._signed("HEAD", key, {}, {})
        async for attempt in self._retrying():
            with attempt:
                try:
                    resp = await self._http.head(url, headers=signed)
                except httpx.TransportError as exc:
                    raise StorageUnavailable(f"S3 unreachable while checking {key!r}: {exc}") from exc
                if resp.status_code >= 500:
                    raise StorageUnavailable(f"S3 failed checking {key!r}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            return False
        same_size = resp.headers.get("Content-Length") == str(size)
        return same_size and (sha256 is None or resp.headers.get(SHA256_META) == sha256)

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort the upload (its parts stop being billed); one already gone is fine."""
        with contextlib.suppress(NoSuchUpload):
            await self._retried("DELETE", key, f"aborting the multipart upload of {key!r}", {"uploadId": upload_id})
        log.info("storage_multipart_aborted", object_name=key)

    async def list_uploads(self, prefix: str) -> list[OpenUpload]:
        """Multipart uploads open under ``prefix`` (first 1000)."""
        resp = await self._retried("GET", "", "listing open multipart uploads", {"uploads": "", "prefix": prefix})
        out = []
        for node in _findall(_xml(resp.content), "Upload"):
            key, upload_id, initiated = _find(node, "Key"), _find(node, "UploadId"), _find(node, "Initiated")
            if key and upload_id:
                out.append(OpenUpload(key, upload_id, _when(initiated)))
        return out

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


def _when(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _error(resp: httpx.Response) -> tuple[str, str]:
    """(Code, Message) of an S3 error body, falling back to the status."""
    try:
        root = _xml(resp.content)
        return _find(root, "Code") or str(resp.status_code), (_find(root, "Message") or "")[:300]
    except ET.ParseError:
        return str(resp.status_code), resp.text.strip()[:300] or resp.reason_phrase


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


async def _file_range(path: Path, offset: int, size: int) -> AsyncIterator[bytes]:
    pos, end = offset, offset + size
    while pos < end:
        block = await asyncio.to_thread(_read_at, path, pos, min(BLOCK, end - pos))
        if not block:
            raise StorageRejected(f"{path} shrank while it was being uploaded")
        pos += len(block)
        yield block
