"""Output storage on any object store: ``STORAGE_URL`` = ``s3://bucket/prefix``, ``gs://…``, ``az://…``.

Built on obstore (Python bindings of Rust's ``object_store``: S3 and every S3-compatible service, Google
Cloud Storage, Azure Blob behind one async API, with its own retries). Credentials come from each cloud's
standard environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_STORAGE_*``), read by obstore itself; none is ever
logged. Object keys are ``{prefix}/{storage_path}``; ``storage_path`` (what rows record) is relative to the
prefix, as for the other backends.

Uploads stream from disk with bounded memory:

* files up to ``part_size`` (8 MiB): one PUT (the bytes are read once, hashed and sent);
* larger files on S3-compatible stores with a static key: a multipart upload driven by
  :class:`~comfy_worker.storage.s3multipart.S3Multipart`, whose upload id goes to the task's
  :class:`~comfy_worker.storage.base.UploadJournal` as soon as it exists. The next attempt (any worker) asks
  the server which parts it holds and sends only the others. An upload that fails for good, or a journalled
  one of another file, is aborted; :meth:`ObjectStorage.check` also aborts uploads under the prefix that
  were left open longer than ``abandon_after_s`` (a worker that died and whose task was never retried);
* larger files on Azure with an account key or SAS: block blob uploads driven by
  :class:`~comfy_worker.storage.azblocks.AzureBlocks`, resumable the same way (block ids derived from the file's
  sha256, the upload's facts in the journal before the first block, Get Block List on resume);
* larger files elsewhere (GCS native, S3 with instance credentials, Azure with Entra ID): obstore's streamed
  multipart upload (``put_async`` over a generator of 1 MiB blocks, ``part_size`` parts, two in flight). It is
  not resumable across processes: ``object_store`` keeps the upload id to itself.

:meth:`ObjectStorage.discard_uploads` gives up a task's journalled uploads when the daemon knows the task will
not run again (cancelled, failed for good).

URLs are ``PUBLIC_BASE_URL`` + object key when set, else presigned GET URLs valid for ``SIGNED_URL_TTL_S``
(capped at the clouds' 7-day limit). Downloads stream to ``.NAME.part``: obstore itself continues a body cut
mid-way with a range request; when its retries run out, the next try here resumes after the bytes on disk with
a range pinned to the object's ETag (``If-Match``), and starts over if the object changed.
:func:`fetch_object_url` serves ``s3://…`` (``gs://``, ``az://``) task inputs with the input size cap and disk
floor, through one store per bucket for the process (:func:`input_store`) and the outputs' retry policy and
error mapping (:func:`map_store_error`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import obstore
from obstore.exceptions import (
    BaseError,
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import from_url
from tenacity import AsyncRetrying

from comfy_worker.config import OBJECT_STORE_SCHEMES, Settings, check_storage_url
from comfy_worker.errors import ConfigError, StorageRejected, StorageUnavailable
from comfy_worker.filehash import READ_BLOCK, file_sha256
from comfy_worker.logs import get_logger, register_secret
from comfy_worker.storage.azblocks import AzureBlocks, block_id
from comfy_worker.storage.base import (
    StoredObject,
    UploadJournal,
    retrying,
    upload_source,
    validate_path,
)
from comfy_worker.storage.s3multipart import NoSuchUpload, Part, S3Multipart

log = get_logger(__name__)

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
MAX_SIGNED_TTL_S = 7 * 24 * 3600  # S3 and GCS V4 signatures, Azure user-delegation SAS: at most 7 days
CHECK_PREFIX = ".comfy-worker-check"
_STORED = "\x00stored"  # _resume_point: the journalled upload was completed already
_CLOUD = {"s3": "S3", "gs": "Google Cloud Storage", "az": "Azure Blob Storage"}
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account JSON file) or GOOGLE_SERVICE_ACCOUNT_KEY",
    "az": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY",
}
_SECRET_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
RoomCheck = Callable[[int, str], None]
_S3_CONFIG = {
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "token",
    "AWS_REGION": "region",
    "AWS_ENDPOINT_URL": "endpoint",
}


def split_object_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of ``s3://bucket/key`` (``azure`` normalised to ``az``)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return ("az" if scheme == "azure" else scheme), parts.netloc, parts.path.strip("/")


def _client_options(env: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {"connect_timeout": dt.timedelta(seconds=15), "timeout": dt.timedelta(seconds=300)}
    flags = ("AWS_ALLOW_HTTP", "AZURE_ALLOW_HTTP", "GOOGLE_ALLOW_HTTP", "ALLOW_HTTP", "AZURE_STORAGE_USE_EMULATOR")
    if any((env.get(name) or "").strip().lower() in ("1", "true", "yes") for name in flags):
        options["allow_http"] = True  # a plain http:// endpoint (MinIO, Azurite, ...): the operator asked for it
    return options


def open_object_store(scheme: str, bucket: str, prefix: str, env: Mapping[str, str]) -> Any:
    """The obstore store for ``scheme://bucket/prefix``, configured from the cloud's environment."""
    url = f"{scheme}://{bucket}/{prefix}".rstrip("/")
    retry = {"max_retries": 5, "retry_timeout": dt.timedelta(seconds=120)}
    config: dict[str, str] = {}
    if scheme == "s3":  # obstore reads os.environ too; an explicit mapping (tests, one-off clients) wins
        for var, name in _S3_CONFIG.items():
            if env.get(var):
                config[name] = env[var]
    try:
        return from_url(url, client_options=_client_options(env), retry_config=retry, config=config or None)
    except BaseError as exc:
        raise ConfigError("STORAGE_URL", f"cannot open {url!r}: {_first_line(exc)}") from exc


_DENIED = (
    "403 forbidden",
    "401 unauthorized",
    "accessdenied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "authenticationfailed",
)


def map_store_error(
    exc: BaseException, what: str, *, scheme: str, bucket: str, source: str, setting: str, details: dict[str, Any]
) -> Exception:
    """An obstore error as StorageRejected (permanent: credentials refused, bucket or object missing) or
    StorageUnavailable (retryable). ``source``: what was being used (``STORAGE_URL s3://b/p``, ``input URL
    s3://b/k``, or empty where the caller names it); ``setting``: what to fix when the bucket is missing."""
    text = _first_line(exc)
    cloud = _CLOUD[scheme]
    lowered = str(exc).lower()
    of, used = (f" of {source}", f" for {source}") if source else ("", "")
    denied = StorageRejected(f"{cloud} refused {what} ({text}): check {_CREDENTIALS[scheme]}{used}", details=details)
    no_bucket = StorageRejected(f"bucket {bucket!r}{of} does not exist: create it or fix {setting}", details=details)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return denied
    if isinstance(exc, NotFoundError | FileNotFoundError):
        if any(s in lowered for s in ("nosuchbucket", "containernotfound", "bucket does not exist")):
            return no_bucket
        return StorageRejected(f"{cloud}: {what}: no such object ({text})", details={**details, "status": 404})
    if "sas tokens auth is not supported" in lowered:  # obstore cannot sign a URL with a SAS token
        return StorageRejected(
            f"{cloud} cannot sign URLs with AZURE_STORAGE_SAS_KEY alone: set AZURE_STORAGE_ACCOUNT_KEY, or "
            "PUBLIC_BASE_URL for a public container",
            details=details,
        )
    if isinstance(exc, PreconditionError):
        return StorageUnavailable(f"{cloud}: {what}: the object changed meanwhile ({text})", details=details)
    if any(s in lowered for s in _DENIED):
        return denied
    if "nosuchbucket" in lowered:
        return no_bucket
    if isinstance(exc, GenericError | OSError | BaseError):
        return StorageUnavailable(f"{cloud} failed {what}: {text}", details=details)
    return StorageUnavailable(f"{cloud} failed {what}: {type(exc).__name__}: {text}", details=details)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__


class ObjectStorage:
    """A :class:`~comfy_worker.storage.base.Storage` on one bucket (and prefix) of S3, GCS or Azure."""

    def __init__(
        self,
        url: str,
        *,
        signed_url_ttl_s: int,
        public_base_url: str = "",
        env: Mapping[str, str] | None = None,
        part_size: int = PART_SIZE,
        concurrency: int = 4,
        abandon_after_s: float = 24 * 3600,
        retry_attempts: int = 5,
        retry_wait_s: float = 0.5,
    ) -> None:
        check_storage_url(url)
        env = os.environ if env is None else env
        self.url = url.rstrip("/")
        self.scheme, self.bucket, self.prefix = split_object_url(url)
        if self.scheme not in OBJECT_STORE_SCHEMES and self.scheme != "az":
            raise ConfigError("STORAGE_URL", f"{url!r} is not an s3://, gs:// or az:// URL")
        for name in _SECRET_VARS:
            register_secret(env.get(name, ""))
        self.public_base_url = public_base_url.rstrip("/")
        # the default (a year, for Supabase) is capped silently; a longer value the operator chose is said once
        chosen = signed_url_ttl_s != Settings.signed_url_ttl_s
        if signed_url_ttl_s > MAX_SIGNED_TTL_S and not self.public_base_url and chosen:
            log.warning(
                "storage_signed_url_ttl_capped",
                requested_s=signed_url_ttl_s,
                used_s=MAX_SIGNED_TTL_S,
                hint="signed URLs of S3, GCS and Azure last at most 7 days; set PUBLIC_BASE_URL for longer-lived URLs",
            )
        self.signed_url_ttl_s = min(signed_url_ttl_s, MAX_SIGNED_TTL_S)
        self.part_size = part_size
        self.concurrency = concurrency
        self.abandon_after_s = abandon_after_s
        self._retry_attempts, self._retry_wait_s = retry_attempts, retry_wait_s
        self._store = open_object_store(self.scheme, self.bucket, self.prefix, env)
        self._s3 = (
            S3Multipart.from_env(self.bucket, env, retry_attempts=retry_attempts, retry_wait_s=retry_wait_s)
            if self.scheme == "s3"
            else None
        )
        self._az = (
            AzureBlocks.from_env(self.bucket, env, retry_attempts=retry_attempts, retry_wait_s=retry_wait_s)
            if self.scheme == "az"
            else None
        )
        self._what = f"STORAGE_URL {self.url}"

    # --- plumbing -------------------------------------------------------------------------------------------

    def key(self, path: str) -> str:
        """The object key of a storage path (the prefix joined in front)."""
        return f"{self.prefix}/{path}" if self.prefix else path

    def _retrying(self) -> AsyncRetrying:
        return retrying(self._retry_attempts, self._retry_wait_s)

    def _mapped(self, exc: BaseException, what: str, path: str | None) -> Exception:
        """An obstore error as StorageRejected (permanent) or StorageUnavailable (retryable)."""
        return map_store_error(
            exc,
            what,
            scheme=self.scheme,
            bucket=self.bucket,
            source=self._what,
            setting="STORAGE_URL",
            details={"path": path, "url": self.url},
        )

    async def _call(self, what: str, path: str | None, fn: Callable[[], Any]) -> Any:
        """``await fn()`` with obstore's errors mapped; StorageUnavailable is retried with backoff."""
        async for attempt in self._retrying():
            with attempt:
                try:
                    return await fn()
                except (BaseError, OSError) as exc:
                    raise self._mapped(exc, what, path) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- Storage protocol -----------------------------------------------------------------------------------

    async def check(self) -> None:
        """Write and delete a small object under the prefix; abort multipart uploads left open too long."""
        probe = self.key(f"{CHECK_PREFIX}/{uuid.uuid4().hex}")
        rel = probe[len(self.prefix) + 1 :] if self.prefix else probe
        try:
            await obstore.put_async(self._store, rel, b"ok", use_multipart=False)
            await obstore.delete_async(self._store, rel)
        except (BaseError, OSError) as exc:
            mapped = self._mapped(exc, f"a test write to {self._what}", None)
            if isinstance(mapped, StorageUnavailable):
                raise StorageRejected(
                    f"{self._what} is not reachable ({_first_line(exc)}): check the endpoint "
                    "(AWS_ENDPOINT_URL, AWS_ALLOW_HTTP for http://) and the network",
                    details=mapped.details,
                ) from exc
            raise mapped from exc
        if not self.public_base_url:  # every output's URL is signed: a store that cannot sign stops here
            await self.url_for(rel)
        if self._s3 is not None:
            await self._abort_abandoned()

    async def _abort_abandoned(self) -> None:
        try:
            uploads = await self._s3.list_uploads(f"{self.prefix}/" if self.prefix else "")  # type: ignore[union-attr]
        except (StorageRejected, StorageUnavailable) as exc:
            log.warning("storage_multipart_sweep_failed", error=str(exc))
            return
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.abandon_after_s)
        for up in uploads:
            if up.initiated is None or up.initiated >= cutoff:
                continue
            # an upload that still receives parts is alive, however old its start (a long upload being resumed)
            try:
                parts = await self._s3.list_parts(up.key, up.upload_id)  # type: ignore[union-attr]
            except (StorageRejected, StorageUnavailable):
                continue
            newest = max((p.last_modified for p in parts.values() if p.last_modified), default=None)
            if newest is not None and newest >= cutoff:
                continue
            log.info("storage_multipart_abandoned", object_name=up.key, initiated=up.initiated.isoformat())
            await self._abort_quietly(up.key, up.upload_id)

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
        what = f"uploading {dest_path!r}"
        attributes = {"Content-Type": content_type}
        mode = "single"
        if size <= self.part_size:
            data, sha = await asyncio.to_thread(_read_hashed, local_path)
            await self._call(
                what,
                dest_path,
                lambda: obstore.put_async(self._store, dest_path, data, attributes=attributes, use_multipart=False),
            )
            del data
        elif self._s3 is not None:
            mode = "resumable"
            sha = await self._upload_resumable(local_path, dest_path, size, content_type, sha256, journal)
        elif self._az is not None:
            mode = "resumable"
            sha = await self._upload_azure(local_path, dest_path, size, content_type, sha256, journal)
        else:
            mode = "multipart"
            hashers = [hashlib.sha256()]

            def blocks() -> Iterator[bytes]:
                # a retry starts the stream over, so it starts a new digest too (hashlib objects cannot be reset)
                hasher = hashers[0] = hashlib.sha256()
                with open(local_path, "rb") as fh:
                    while block := fh.read(READ_BLOCK):
                        hasher.update(block)
                        yield block

            await self._call(
                what,
                dest_path,
                lambda: obstore.put_async(
                    self._store,
                    dest_path,
                    blocks(),
                    attributes=attributes,
                    chunk_size=self.part_size,
                    max_concurrency=2,
                ),
            )
            sha = hashers[0].hexdigest()
        if sha256 is not None:
            sha = sha256
        url = await self.url_for(dest_path)
        log.info("storage_uploaded", backend=self.scheme, path=dest_path, bytes=size, mode=mode)
        return StoredObject(path=dest_path, url=url, bytes=size, sha256=sha, content_type=content_type)

    def _part_size_for(self, size: int) -> int:
        need = -(-size // MAX_PARTS)
        return max(self.part_size, -(-need // MiB) * MiB)

    async def _upload_resumable(
        self,
        local_path: Path,
        dest_path: str,
        size: int,
        content_type: str,
        sha256: str | None,
        journal: UploadJournal | None,
    ) -> str:
        s3 = self._s3
        assert s3 is not None
        key = self.key(dest_path)
        if sha256 is None:  # a resume must know it sends the rest of the same file: one read to hash it
            sha256 = await asyncio.to_thread(file_sha256, local_path)
        part_size = self._part_size_for(size)
        upload_id, held = await self._resume_point(journal, dest_path, key, size, sha256, part_size)
        if upload_id == _STORED:
            return sha256
        if upload_id is None:
            upload_id = await s3.create(key, content_type, sha256)
            if journal is not None:
                entry = {
                    "backend": "s3",
                    "bucket": self.bucket,
                    "key": key,
                    "upload_id": upload_id,
                    "size": size,
                    "sha256": sha256,
                    "part_size": part_size,
                }
                await journal.save(dest_path, entry)
        expected = _part_sizes(size, part_size)
        count = len(expected)
        parts = {n: p for n, p in held.items() if expected.get(n) == p.size}
        todo = [n for n in expected if n not in parts]

        async def send(n: int) -> None:
            parts[n] = await s3.upload_part(key, upload_id, n, local_path, (n - 1) * part_size, expected[n])

        try:
            await self._send_parts(todo, send, "s3-part")
            await s3.complete(key, upload_id, list(parts.values()), size=size, sha256=sha256)
        except (StorageRejected, StorageUnavailable) as exc:
            # never finishable, or nobody will resume it (no journal): abort, so no part is left billed. An
            # unavailable store with a journal keeps the upload for the next attempt.
            if isinstance(exc, StorageRejected) or journal is None:
                log.warning("storage_upload_failed", path=dest_path, error=str(exc))
                await self._abort_quietly(key, upload_id)
                if journal is not None:
                    await journal.forget(dest_path)
            raise
        if journal is not None:
            await journal.forget(dest_path)
        log.info("storage_multipart_done", path=dest_path, parts=count, sent=len(todo), resumed=len(held) > 0)
        return sha256

    async def discard_uploads(self, journal: UploadJournal) -> None:
        """Abort the multipart uploads of this bucket the journal names (the task will not be attempted again)."""
        for dest_path, entry in list(journal.entries.items()):
            key, upload_id, backend = entry.get("key"), entry.get("upload_id"), entry.get("backend")
            # the entry comes back from the task row: only the upload to the key its own path maps to is aborted
            mine = entry.get("bucket") == self.bucket and key == self.key(dest_path)
            if mine and backend == "s3" and self._s3 is not None and isinstance(upload_id, str):
                log.info("storage_upload_discarded", path=dest_path, object_name=key)
                await self._abort_quietly(str(key), upload_id)
            elif mine and backend == "az" and self._az is not None:
                log.info("storage_upload_discarded", path=dest_path, object_name=key)
                await self._discard_az_quietly(str(key))
            journal.entries.pop(dest_path, None)

    async def _upload_azure(
        self,
        local_path: Path,
        dest_path: str,
        size: int,
        content_type: str,
        sha256: str | None,
        journal: UploadJournal | None,
    ) -> str:
        """A block blob upload the next attempt can continue: block ids derived from the file's digest, the
        upload's facts in the journal before the first block is sent, Get Block List on resume."""
        az = self._az
        assert az is not None
        key = self.key(dest_path)
        if sha256 is None:  # the block ids and a resume need the digest first: one read to hash it
            sha256 = await asyncio.to_thread(file_sha256, local_path)
        part_size = self._part_size_for(size)
        facts = {
            "backend": "az",
            "bucket": self.bucket,
            "key": key,
            "size": size,
            "sha256": sha256,
            "part_size": part_size,
        }
        entry = journal.get(dest_path) if journal is not None else None
        held: dict[str, Any] = {}
        if entry and journal is not None:
            ours = entry.get("backend") == "az" and entry.get("bucket") == self.bucket
            if ours and entry == facts:
                held = await az.uncommitted(key)
                if not held and await az.stored_as(key, size, sha256):  # committed by an attempt that then died
                    await journal.forget(dest_path)
                    log.info("storage_upload_already_stored", path=dest_path, bytes=size)
                    return sha256
                log.info("storage_upload_resumed", path=dest_path, parts_held=len(held), bytes=size)
            else:
                if ours and entry.get("key") == key:  # another file's blocks under this very name
                    await self._discard_az_quietly(key)
                log.info("storage_resume_skipped", path=dest_path, reason="another file" if ours else "not this store")
                await journal.forget(dest_path)
                entry = None
        if journal is not None and not entry:
            await journal.save(dest_path, facts)
        expected = _part_sizes(size, part_size)
        count = len(expected)
        ids = {n: block_id(sha256, part_size, n) for n in expected}
        todo = [n for n in expected if getattr(held.get(ids[n]), "size", None) != expected[n]]

        async def send(n: int) -> None:
            await az.put_block(key, ids[n], local_path, (n - 1) * part_size, expected[n])

        try:
            await self._send_parts(todo, send, "az-block")
            await az.commit(key, [ids[n] for n in expected], content_type, sha256)
        except (StorageRejected, StorageUnavailable) as exc:
            if isinstance(exc, StorageRejected) or journal is None:  # as for S3: nobody will finish it
                log.warning("storage_upload_failed", path=dest_path, error=str(exc))
                await self._discard_az_quietly(key)
                if journal is not None:
                    await journal.forget(dest_path)
            raise
        if journal is not None:
            await journal.forget(dest_path)
        log.info("storage_multipart_done", path=dest_path, parts=count, sent=len(todo), resumed=bool(held))
        return sha256

    async def _send_parts(self, todo: list[int], send: Callable[[int], Awaitable[None]], label: str) -> None:
        """``send`` each part number in ``todo``, at most ``concurrency`` at a time, in a TaskGroup: when one part
        fails for good the others are cancelled and awaited before anything else happens, so no part is still
        being sent when the upload is aborted or the error recorded (the first failure is raised)."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(n: int) -> None:
            async with gate:
                await send(n)

        try:
            async with asyncio.TaskGroup() as group:
                for n in todo:
                    group.create_task(one(n), name=f"{label}-{n}")
        except BaseExceptionGroup as failed:
            raise _first_failure(failed) from None

    async def _discard_az_quietly(self, key: str) -> None:
        try:
            await self._az.discard(key)  # type: ignore[union-attr]
        except (StorageRejected, StorageUnavailable) as exc:
            log.warning("storage_multipart_abort_failed", object_name=key, error=str(exc))

    async def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            await self._s3.abort(key, upload_id)  # type: ignore[union-attr]
        except (StorageRejected, StorageUnavailable) as exc:
            log.warning("storage_multipart_abort_failed", object_name=key, error=str(exc))

    async def _resume_point(
        self, journal: UploadJournal | None, dest_path: str, key: str, size: int, sha256: str, part_size: int
    ) -> tuple[str | None, dict[int, Part]]:
        """(upload id, parts the server holds) of a journalled upload of this very file, or (None, {})."""
        entry = journal.get(dest_path) if journal is not None else None
        if not entry or journal is None:
            return None, {}
        upload_id = entry.get("upload_id")
        ours = entry.get("backend") == "s3" and entry.get("bucket") == self.bucket and isinstance(upload_id, str)
        same = ours and (entry.get("key"), entry.get("size"), entry.get("sha256"), entry.get("part_size")) == (
            key,
            size,
            sha256,
            part_size,
        )
        if not same:
            # another file's upload to this same key: nobody will finish it. (The entry comes back from the task
            # row: only an upload to the key this very path maps to is ever aborted.)
            if ours and entry.get("key") == key:
                await self._abort_quietly(str(entry["key"]), str(upload_id))
            log.info("storage_resume_skipped", path=dest_path, reason="another file" if ours else "not this store")
            await journal.forget(dest_path)
            return None, {}
        try:
            held = await self._s3.list_parts(key, str(upload_id))  # type: ignore[union-attr]
        except NoSuchUpload:
            await journal.forget(dest_path)
            # the last attempt may have completed it and died before it could say so
            if await self._s3.stored_as(key, size, sha256):  # type: ignore[union-attr]
                log.info("storage_upload_already_stored", path=dest_path, bytes=size)
                return _STORED, {}
            log.info("storage_resume_skipped", path=dest_path, reason="the upload is gone")
            return None, {}
        log.info("storage_upload_resumed", path=dest_path, parts_held=len(held), bytes=size)
        return str(upload_id), held

    async def download(
        self, storage_path: str, local_path: Path, *, max_bytes: int | None = None, room: RoomCheck | None = None
    ) -> Path:
        validate_path(storage_path)
        return await download_object(
            self._store,
            storage_path,
            Path(local_path),
            shown=f"{self.url}/{storage_path}",
            mapped=lambda exc, what: self._mapped(exc, what, storage_path),
            max_bytes=max_bytes,
            room=room,
            retrying=self._retrying,
        )

    async def delete(self, paths: list[str]) -> None:
        for p in paths:
            validate_path(p)
        for p in paths:
            # a path may name a "folder" (the prompt runner removes a chain's intermediates by prefix)
            listed = await self._call(
                f"listing {p!r}", p, lambda p=p: obstore.list(self._store, prefix=f"{p}/").collect_async()
            )
            doomed = [p, *(m["path"] for m in listed)]
            try:
                await obstore.delete_async(self._store, doomed)
            except (BaseError, OSError) as exc:
                mapped = self._mapped(exc, f"deleting {p!r}", p)
                if not (isinstance(mapped, StorageRejected) and mapped.details.get("status") == 404):
                    raise mapped from exc

    async def url_for(self, path: str) -> str:
        validate_path(path)
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(self.key(path))}"
        ttl = dt.timedelta(seconds=self.signed_url_ttl_s)
        return str(
            await self._call(
                f"signing a URL for {path!r}", path, lambda: obstore.sign_async(self._store, "GET", path, ttl)
            )
        )

    async def aclose(self) -> None:
        if self._s3 is not None:
            await self._s3.aclose()
        if self._az is not None:
            await self._az.aclose()


def _first_failure(group: BaseExceptionGroup) -> BaseException:
    """The error of a failed group of part uploads to raise: a permanent one first (the upload is then
    aborted), else a retryable one, else whatever came first."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            flat.append(exc)
    for kind in (StorageRejected, StorageUnavailable):
        for exc in flat:
            if isinstance(exc, kind):
                return exc
    return flat[0]


def _read_hashed(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _part_sizes(size: int, part_size: int) -> dict[int, int]:
    """Part number (from 1) → its length, for a ``size``-byte file cut into ``part_size`` pieces."""
    return {n: min(part_size, size - (n - 1) * part_size) for n in range(1, -(-size // part_size) + 1)}


async def download_object(
    store: Any,
    path: str,
    dest: Path,
    *,
    shown: str,
    mapped: Callable[[BaseException, str], Exception],
    retrying: Callable[[], AsyncRetrying],
    max_bytes: int | None = None,
    room: RoomCheck | None = None,
) -> Path:
    """Stream the object at ``path`` to ``dest`` (via ``.NAME.part``), resuming after a cut with a range
    request pinned to the first response's ETag; the size cap and disk floor are checked before a byte is
    written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    what = f"downloading {shown}"
    state: dict[str, Any] = {"etag": None, "size": None}

    async def once() -> None:
        held = tmp.stat().st_size if state["etag"] and tmp.exists() else 0
        options: dict[str, Any] = {}
        if held:
            options = {"if_match": state["etag"], "range": {"offset": held}}
        try:
            result = await obstore.get_async(store, path, options=options or None)
            meta = result.meta
            if state["size"] is None:
                size = int(meta["size"])
                if max_bytes is not None and size > max_bytes:
                    raise StorageRejected(
                        f"{shown} is {size} bytes, over INPUT_MAX_BYTES ({max_bytes})",
                        details={"bytes": size, "max_bytes": max_bytes},
                    )
                if room is not None:
                    room(size, shown)
                state["size"], state["etag"] = size, meta.get("e_tag")
            elif held:
                log.info("storage_download_resumed", path=shown, offset=held)
            with open(tmp, "r+b" if held else "wb") as out:  # noqa: ASYNC230 - writes go through to_thread
                out.seek(held)
                async for chunk in result.stream(min_chunk_size=READ_BLOCK):
                    await asyncio.to_thread(out.write, chunk)
        except PreconditionError:
            tmp.unlink(missing_ok=True)  # the object changed: start over
            state["etag"] = state["size"] = None
            raise StorageUnavailable(f"{shown} changed during the download; starting over") from None
        except (BaseError, OSError) as exc:
            if isinstance(exc, BaseError | FileNotFoundError):
                raise mapped(exc, what) from exc
            raise StorageUnavailable(f"{what} failed: {_first_line(exc)}") from exc
        got = tmp.stat().st_size
        if got != state["size"]:
            raise StorageUnavailable(f"{what}: the connection ended after {got} of {state['size']} bytes")

    try:
        async for attempt in retrying():
            with attempt:
                await once()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


_INPUT_STORES: dict[tuple[str, str, str], Any] = {}  # (scheme, bucket, digest of the cloud's settings) -> store
_CLOUD_VARS = ("AWS_", "AZURE_", "AZURITE_", "GOOGLE_", "ALLOW_HTTP")


def input_store(scheme: str, bucket: str, env: Mapping[str, str]) -> Any:
    """The obstore store inputs of ``scheme://bucket/…`` are read through, opened once per process (its
    connection pool and credentials are reused by every later input). The key holds a digest of the cloud's
    settings too, so a changed environment (a test, a one-off client) gets a store of its own."""
    settings = sorted((k, v) for k, v in env.items() if k.startswith(_CLOUD_VARS))
    digest = hashlib.sha256(repr(settings).encode()).hexdigest()
    store = _INPUT_STORES.get((scheme, bucket, digest))
    if store is None:
        store = _INPUT_STORES[(scheme, bucket, digest)] = open_object_store(scheme, bucket, "", env)
    return store


async def fetch_object_url(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    room: RoomCheck | None = None,
    env: Mapping[str, str] | None = None,
    retry_attempts: int = 4,
    retry_wait_s: float = 1.0,
) -> Path:
    """Download a task input given as ``s3://bucket/key`` (``gs://``, ``az://``) with the store's own
    credentials, through the process's store for that bucket, the stores' retry policy and error mapping. The
    endpoint is operator configuration, so the private-address guard of http inputs does not apply; the size
    cap and disk floor do."""
    env = os.environ if env is None else env
    scheme, bucket, key = split_object_url(url)
    if not bucket or not key:
        raise StorageRejected(f"input URL {url!r} must name a bucket and a key: s3://bucket/path/to/file")
    validate_path(key)
    store = input_store(scheme, bucket, env)

    def mapped(exc: BaseException, what: str) -> Exception:
        return map_store_error(
            exc,
            what,
            scheme=scheme,
            bucket=bucket,
            source="",
            setting="the input URL",
            details={"url": url},
        )

    result = await download_object(
        store,
        key,
        dest,
        shown=url,
        mapped=mapped,
        retrying=lambda: retrying(retry_attempts, retry_wait_s),
        max_bytes=max_bytes,
        room=room,
    )
    log.info("input_fetched", url=url, path=str(dest), bytes=result.stat().st_size)
    return result
