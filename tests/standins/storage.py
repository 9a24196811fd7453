"""A test-only stand-in for Supabase Storage's HTTP surface (the ``/storage/v1`` API of supabase/storage).

No Supabase Storage server can run here, so this small aiohttp app on 127.0.0.1 answers the endpoints
comfy_worker.storage.supabase uses, following the documented API:

* ``GET  /storage/v1/bucket/{bucket}``                       bucket info, 404 ``Bucket not found``
* ``POST|PUT /storage/v1/object/{bucket}/{path}``            raw-body upload (``x-upsert``, Content-Type kept)
* ``GET  /storage/v1/object/{bucket}/{path}``                authenticated download
* ``DELETE /storage/v1/object/{bucket}``                     ``{"prefixes": [...]}``
* ``POST /storage/v1/object/sign/{bucket}/{path}``           ``{"expiresIn": n}`` → ``{"signedURL": …}``
* ``GET  /storage/v1/object/sign/{bucket}/{path}?token=…``   signed download
* ``GET  /storage/v1/object/public/{bucket}/{path}``         public download (public buckets only)
* ``POST /storage/v1/upload/resumable``                      TUS 1.0.0 creation
* ``HEAD|PATCH /storage/v1/upload/resumable/{id}``           TUS offset query / chunk append

Errors are JSON ``{"statusCode": "404", "error": …, "message": …}`` like the real server. Requests need
``apikey: <key>`` and ``Authorization: Bearer <key>`` (public and signed GETs excepted).

Simplified: no multipart form uploads (raw bodies only), no RLS/policies or per-bucket MIME/size limits
(one ``max_object_bytes`` for all), signed-URL tokens are ``<expiry>.<hmac>`` rather than JWTs, uploads
that fail mid-body keep nothing unless a failure injection says otherwise, no TUS expiration or
termination. Objects are plain files under ``root/<bucket>/<path>``; every body is streamed to disk, so
the stand-in's memory stays flat for multi-GB transfers (the transfer benchmark relies on that).

It records every request (:attr:`StorageStandin.requests`) and can inject failures
(:meth:`StorageStandin.fail`), e.g. the 3rd PATCH answers 500 after storing 1 MiB of its chunk, or keeps
1 MiB and drops the connection without answering. TUS uploads live in the stand-in object, so a new client
(a restarted worker) can resume one with HEAD + PATCH as it would against Supabase.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

MiB = 1024 * 1024
TUS_VERSION = "1.0.0"
_BLOCK = 256 * 1024


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int = 0
    status: int = 0


@dataclass
class _Failure:
    method: str
    countdown: int
    status: int
    keep_bytes: int
    cut: bool = False  # drop the connection instead of answering (the client sees a reset socket)


_RECORD = web.RequestKey("record", RecordedRequest)
_FAILURE = web.RequestKey("failure", _Failure)


@dataclass
class _Upload:
    bucket: str
    name: str
    length: int
    content_type: str
    part: Path
    offset: int = 0
    meta: dict[str, str] = field(default_factory=dict)


def _err(
    status: int, error: str, message: str | None = None, *, http_status: int | None = None
) -> web.Response:
    body = {"statusCode": str(status), "error": error, "message": message or error}
    return web.json_response(body, status=http_status or status)


def _parse_metadata(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = item.partition(" ")
        out[key] = base64.b64decode(value).decode() if value else ""
    return out


class StorageStandin:
    """Supabase Storage stand-in. ``buckets`` maps bucket name → public flag.

    ``not_found_status``: HTTP status used for "not found" answers (404; some Supabase versions send 400
    with ``statusCode: "404"`` in the body — pass 400 to mimic them)."""

    def __init__(
        self,
        key: str,
        root: Path,
        *,
        buckets: dict[str, bool] | None = None,
        max_object_bytes: int = 50 * 1024 * MiB,
        chunk_size: int = 6 * MiB,
        not_found_status: int = 404,
    ) -> None:
        self.key = key
        self.root = Path(root)
        self.buckets = dict(buckets if buckets is not None else {"outputs": False})
        self.max_object_bytes = max_object_bytes
        self.chunk_size = chunk_size
        self.not_found_status = not_found_status
        self.requests: list[RecordedRequest] = []
        self.content_types: dict[tuple[str, str], str] = {}
        self.uploads: dict[str, _Upload] = {}
        self._failures: list[_Failure] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- control -------------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * MiB)
        r = app.router
        v1 = "/storage/v1"
        r.add_get(v1 + "/bucket/{bucket}", self._bucket, allow_head=False)
        r.add_post(v1 + "/object/sign/{bucket}/{name:.+}", self._sign)
        r.add_get(v1 + "/object/sign/{bucket}/{name:.+}", self._signed_get, allow_head=False)
        r.add_get(v1 + "/object/public/{bucket}/{name:.+}", self._public_get, allow_head=False)
        r.add_post(v1 + "/object/{bucket}/{name:.+}", self._put_object)
        r.add_put(v1 + "/object/{bucket}/{name:.+}", self._put_object)
        r.add_get(v1 + "/object/{bucket}/{name:.+}", self._get_object, allow_head=False)
        r.add_delete(v1 + "/object/{bucket}", self._delete)
        r.add_post(v1 + "/upload/resumable", self._tus_create)
        r.add_route("HEAD", v1 + "/upload/resumable/{id}", self._tus_head)
        r.add_patch(v1 + "/upload/resumable/{id}", self._tus_patch)
        self.root.mkdir(parents=True, exist_ok=True)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        host, bound = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail(self, method: str, *, nth: int = 1, status: int = 500, keep_bytes: int = 0, cut: bool = False) -> None:
        """Answer the ``nth`` next ``method`` request with ``status``; a PATCH first keeps ``keep_bytes``.
        ``cut``: a PATCH reads and keeps ``keep_bytes`` of its body, then the connection is dropped mid-body
        with no answer at all (a network cut or a proxy timeout)."""
        self._failures.append(_Failure(method.upper(), nth, status, keep_bytes, cut))

    def object_path(self, bucket: str, name: str) -> Path:
        return self.root / bucket / name

    def calls(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and path_contains in r.path]

    # --- helpers -------------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        rec = RecordedRequest(request.method, request.path, dict(request.headers))
        self.requests.append(rec)
        request[_RECORD] = rec
        failure = self._take_failure(request.method)
        if failure is not None and request.method != "PATCH":
            await request.read()
            resp: web.StreamResponse = _err(failure.status, "injected", "injected failure")
        else:
            if failure is not None:
                request[_FAILURE] = failure
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = exc
        rec.status = resp.status
        return resp

    def _take_failure(self, method: str) -> _Failure | None:
        for f in self._failures:
            if f.method == method:
                f.countdown -= 1
                if f.countdown == 0:
                    self._failures.remove(f)
                    return f
                break
        return None

    def _authorized(self, request: web.Request) -> bool:
        return (
            request.headers.get("apikey") == self.key
            and request.headers.get("Authorization") == f"Bearer {self.key}"
        )

    def _denied(self) -> web.Response:
        return _err(403, "Unauthorized", "invalid signature", http_status=403)

    def _not_found(self, what: str) -> web.Response:
        return _err(
            404,
            "not_found" if what == "Object" else "Bucket not found",
            f"{what} not found",
            http_status=self.not_found_status,
        )

    def _token(self, bucket: str, name: str, exp: int) -> str:
        sig = hmac.new(self.key.encode(), f"{bucket}/{name}:{exp}".encode(), hashlib.sha256).hexdigest()
        return f"{exp}.{sig}"

    async def _stream_body(self, request: web.Request, fh: Any, limit: int) -> int:
        """Copy the body to ``fh`` block by block; returns bytes written (stops early past ``limit``)."""
        n = 0
        async for block in request.content.iter_chunked(_BLOCK):
            n += len(block)
            request[_RECORD].body_bytes = n
            if n > limit:
                return n
            fh.write(block)
        return n

    def _file(self, bucket: str, name: str) -> web.StreamResponse:
        path = self.object_path(bucket, name)
        if bucket not in self.buckets:
            return self._not_found("Bucket")
        if ".." in name.split("/") or not path.is_file():
            return self._not_found("Object")
        ct = self.content_types.get((bucket, name), "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": ct})

    # --- buckets and objects -------------------------------------------------------------------------------

    async def _bucket(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        name = request.match_info["bucket"]
        if name not in self.buckets:
            return self._not_found("Bucket")
        return web.json_response({"id": name, "name": name, "public": self.buckets[name], "owner": ""})

    async def _put_object(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        bucket, name = request.match_info["bucket"], request.match_info["name"]
        if bucket not in self.buckets:
            await request.read()
            return self._not_found("Bucket")
        if ".." in name.split("/"):
            return _err(400, "InvalidKey", f"Invalid key: {name}")
        dest = self.object_path(bucket, name)
        upsert = request.headers.get("x-upsert", "false").lower() == "true" or request.method == "PUT"
        if dest.exists() and not upsert:
            await request.read()
            return _err(409, "Duplicate", "The resource already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            n = await self._stream_body(request, fh, self.max_object_bytes)
        if n > self.max_object_bytes:
            tmp.unlink()
            return _err(413, "Payload too large", "The object exceeded the maximum allowed size")
        os.replace(tmp, dest)
        self.content_types[(bucket, name)] = request.headers.get("Content-Type", "application/octet-stream")
        return web.json_response({"Key": f"{bucket}/{name}", "Id": str(uuid.uuid4())})

    async def _get_object(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._denied()
        return self._file(request.match_info["bucket"], request.match_info["name"])

    async def _public_get(self, request: web.Request) -> web.StreamResponse:
        bucket = request.match_info["bucket"]
        if not self.buckets.get(bucket, False):
            return _err(404, "Bucket not found", "Bucket not found", http_status=400)
        return self._file(bucket, request.match_info["name"])

    async def _sign(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        bucket, name = request.match_info["bucket"], request.match_info["name"]
        body = await request.json()
        try:
            expires_in = int(body["expiresIn"])
        except (KeyError, TypeError, ValueError):
            return _err(400, "InvalidRequest", "body must have expiresIn")
        if not self.object_path(bucket, name).is_file():
            return self._not_found("Object")
        exp = int(time.time()) + expires_in
        return web.json_response(
            {"signedURL": f"/object/sign/{bucket}/{name}?token={self._token(bucket, name, exp)}"}
        )

    async def _signed_get(self, request: web.Request) -> web.StreamResponse:
        bucket, name = request.match_info["bucket"], request.match_info["name"]
        token = request.query.get("token", "")
        exp_s, _, _ = token.partition(".")
        if not exp_s.isdigit() or not hmac.compare_digest(token, self._token(bucket, name, int(exp_s))):
            return _err(400, "InvalidJWT", "invalid signature")
        if int(exp_s) < time.time():
            return _err(400, "InvalidJWT", "jwt expired")
        return self._file(bucket, name)

    async def _delete(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        bucket = request.match_info["bucket"]
        if bucket not in self.buckets:
            return self._not_found("Bucket")
        prefixes = (await request.json()).get("prefixes", [])
        removed = []
        for name in prefixes:
            path = self.object_path(bucket, name)
            if path.is_file():
                path.unlink()
                self.content_types.pop((bucket, name), None)
                removed.append({"name": name, "bucket_id": bucket})
        return web.json_response(removed)

    # --- TUS -----------------------------------------------------------------------------------------------

    def _tus_headers(self, upload: _Upload) -> dict[str, str]:
        return {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(upload.offset),
            "Upload-Length": str(upload.length),
            "Cache-Control": "no-store",
        }

    async def _tus_create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            return web.Response(status=412, headers={"Tus-Version": TUS_VERSION})
        try:
            length = int(request.headers["Upload-Length"])
            meta = _parse_metadata(request.headers.get("Upload-Metadata", ""))
        except (KeyError, ValueError):
            return _err(400, "InvalidRequest", "Upload-Length and a valid Upload-Metadata are required")
        bucket, name = meta.get("bucketName", ""), meta.get("objectName", "")
        if bucket not in self.buckets:
            return self._not_found("Bucket")
        if not name or ".." in name.split("/"):
            return _err(400, "InvalidKey", f"Invalid key: {name}")
        if length > self.max_object_bytes:
            return _err(413, "Payload too large", "The object exceeded the maximum allowed size")
        upsert = request.headers.get("x-upsert", "false").lower() == "true"
        if self.object_path(bucket, name).exists() and not upsert:
            return _err(409, "Duplicate", "The resource already exists")
        upload_id = uuid.uuid4().hex
        part = self.root / ".uploads" / upload_id
        part.parent.mkdir(parents=True, exist_ok=True)
        part.touch()
        self.uploads[upload_id] = _Upload(
            bucket, name, length, meta.get("contentType", "application/octet-stream"), part, meta=meta
        )
        location = f"{self.base_url}/storage/v1/upload/resumable/{upload_id}"
        return web.Response(status=201, headers={"Location": location, "Tus-Resumable": TUS_VERSION})

    async def _tus_head(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404, headers={"Tus-Resumable": TUS_VERSION})
        return web.Response(status=200, headers=self._tus_headers(upload))

    async def _tus_patch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404, headers={"Tus-Resumable": TUS_VERSION})
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            return web.Response(status=412, headers={"Tus-Version": TUS_VERSION})
        if request.headers.get("Content-Type") != "application/offset+octet-stream":
            return _err(415, "InvalidContentType", "Content-Type must be application/offset+octet-stream")
        if request.headers.get("Upload-Offset") != str(upload.offset):
            return _err(409, "OffsetMismatch", f"Upload-Offset must be {upload.offset}")
        remaining = upload.length - upload.offset
        declared = request.content_length
        if declared is not None and declared != self.chunk_size and declared != remaining:
            return _err(400, "InvalidChunkSize", f"chunks must be {self.chunk_size} bytes, except the last")
        failure: _Failure | None = request.get(_FAILURE)
        if failure is not None and failure.cut:
            kept = 0
            with open(upload.part, "r+b") as fh:
                fh.seek(upload.offset)
                async for block in request.content.iter_chunked(_BLOCK):
                    take = block[: failure.keep_bytes - kept]
                    fh.write(take)
                    kept += len(take)
                    request[_RECORD].body_bytes += len(block)
                    if kept >= failure.keep_bytes:
                        break
            upload.offset += kept
            assert request.transport is not None
            request.transport.abort()  # mid-body: the client's send fails or its read finds the socket closed
            return web.Response(status=499)  # never sent: the socket is gone
        with open(upload.part, "r+b") as fh:
            fh.seek(upload.offset)
            n = await self._stream_body(request, fh, remaining)
            if failure is not None or n > remaining or (n != self.chunk_size and n != remaining):
                kept = min(failure.keep_bytes, n) if failure else 0
                fh.truncate(upload.offset + kept)
                upload.offset += kept
                if failure is not None:
                    return _err(failure.status, "injected", "injected failure")
                return _err(
                    400, "InvalidChunkSize", f"chunks must be {self.chunk_size} bytes, except the last"
                )
        upload.offset += n
        headers = self._tus_headers(upload)
        if upload.offset == upload.length:
            dest = self.object_path(upload.bucket, upload.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload.part, dest)
            self.content_types[(upload.bucket, upload.name)] = upload.content_type
            del self.uploads[request.match_info["id"]]
        return web.Response(status=204, headers=headers)


def metadata_of(request: RecordedRequest) -> dict[str, str]:
    """The decoded Upload-Metadata of a recorded TUS creation request."""
    return _parse_metadata(request.headers.get("Upload-Metadata", ""))
