"""Azure block blob uploads we can resume: Put Block / Get Block List / Put Block List / Delete Blob.

obstore's Azure multipart upload keeps its block ids to itself, so a worker killed half-way leaves blocks
nobody can continue. Like :mod:`comfy_worker.storage.s3multipart` for S3, the worker speaks the few Blob REST
calls itself (httpx) for an upload that must survive the process:

* the file is cut into parts of a fixed size; part ``n`` is sent as the block whose id is derived from the
  file's sha256, the part size and ``n`` (all ids of a blob have the same length, as Azure requires), so the
  next attempt, on any worker, computes the same ids;
* on resume, Get Block List (``blocklisttype=uncommitted``) says which of those blocks the service holds
  (with their sizes): only the others are sent;
* Put Block List commits the blocks in order, with the content type and the sha256 as ``x-ms-meta-sha256``;
* an upload nobody will finish is discarded: when no blob of that name is committed, an empty block list is
  committed (which drops every uncommitted block) and the empty blob deleted; over a committed blob the
  uncommitted blocks are left to Azure, which drops them after 7 days (committing would replace the blob).

Auth is Shared Key (``AZURE_STORAGE_ACCOUNT_NAME`` + ``AZURE_STORAGE_ACCOUNT_KEY``) or a SAS token
(``AZURE_STORAGE_SAS_KEY``), the settings obstore reads; ``AZURE_STORAGE_USE_EMULATOR`` with
``AZURITE_BLOB_STORAGE_URL`` (or ``AZURE_STORAGE_ENDPOINT``) points it elsewhere. With other credentials
(Entra ID, managed identity) :meth:`AzureBlocks.from_env` returns None and obstore's upload is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
from tenacity import AsyncRetrying

from comfy_worker.errors import StorageRejected, StorageUnavailable
from comfy_worker.logs import get_logger, register_secret
from comfy_worker.storage.base import retrying
from comfy_worker.storage.s3multipart import _file_range

log = get_logger(__name__)

API_VERSION = "2021-08-06"
SHA256_META = "x-ms-meta-sha256"
_CREDENTIALS = "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY"
_RETRYABLE_CODES = frozenset({"ServerBusy", "InternalError", "OperationTimedOut"})
_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class Block:
    block_id: str
    size: int


def block_id(sha256: str, part_size: int, number: int) -> str:
    """The id of part ``number`` of the file with this digest cut into ``part_size`` parts (base64, 48 chars)."""
    return base64.b64encode(f"cw-{sha256[:20]}-{part_size:012d}-{number:06d}".encode()).decode()


def _xml(body: bytes) -> ET.Element:
    # the body comes from the Azure endpoint the operator configured, not from a task
    return ET.fromstring(body)  # noqa: S314


class AzureBlocks:
    """The block blob calls for one container, signed with Shared Key (or a SAS token)."""

    def __init__(
        self,
        container: str,
        *,
        account: str,
        key: str | None = None,
        sas: str | None = None,
        endpoint: str | None = None,
        http: httpx.AsyncClient | None = None,
        retry_attempts: int = 5,
        retry_wait_s: float = 0.5,
    ) -> None:
        if not key and not sas:
            raise ValueError("AzureBlocks needs an account key or a SAS token")
        self.container, self.account = container, account
        self._key = base64.b64decode(key) if key else None
        self._sas = dict(parse_qsl(sas.lstrip("?"), keep_blank_values=True)) if sas and not key else {}
        base = (endpoint or f"https://{account}.blob.core.windows.net").rstrip("/")
        self._base = f"{base}/{quote(container)}"
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=15.0))
        self._owns_http = http is None
        self._retry_attempts, self._retry_wait_s = retry_attempts, retry_wait_s
        for secret in (key, sas):
            register_secret(secret or "")

    @classmethod
    def from_env(cls, container: str, env: Mapping[str, str], **kw: Any) -> AzureBlocks | None:
        """The client for ``container`` from the Azure variables obstore reads; None without a key or SAS."""
        account = env.get("AZURE_STORAGE_ACCOUNT_NAME") or env.get("AZURE_STORAGE_ACCOUNT")
        key = env.get("AZURE_STORAGE_ACCOUNT_KEY") or env.get("AZURE_STORAGE_ACCESS_KEY")
        sas = env.get("AZURE_STORAGE_SAS_KEY") or env.get("AZURE_STORAGE_SAS_TOKEN")
        if not account or not (key or sas):
            return None
        endpoint = env.get("AZURE_STORAGE_ENDPOINT") or env.get("AZURE_ENDPOINT")
        if (env.get("AZURE_STORAGE_USE_EMULATOR") or "").strip().lower() in _TRUE:
            azurite = (env.get("AZURITE_BLOB_STORAGE_URL") or "http://127.0.0.1:10000").rstrip("/")
            endpoint = f"{azurite}/{account}"
        return cls(container, account=account, key=key or None, sas=sas or None, endpoint=endpoint, **kw)

    # --- signing --------------------------------------------------------------------------------------------

    def _signed(
        self, method: str, blob: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """(URL, headers) of one request: Shared Key signed, or with the SAS token in the query."""
        url = f"{self._base}/{quote(blob, safe='/')}" if blob else self._base
        out = {
            **headers,
            "x-ms-date": format_datetime(dt.datetime.now(dt.UTC), usegmt=True),
            "x-ms-version": API_VERSION,
        }
        if self._key is None:
            query = {**query, **self._sas}
        else:
            path = httpx.URL(url).raw_path.decode("ascii")
            resource = f"/{self.account}{path}" + "".join(
                f"\n{k.lower()}:{v}" for k, v in sorted(query.items(), key=lambda kv: kv[0].lower())
            )
            lower = {k.lower(): v for k, v in out.items()}
            length = lower.get("content-length", "")
            to_sign = "\n".join(
                [
                    method,
                    lower.get("content-encoding", ""),
                    lower.get("content-language", ""),
                    "" if length == "0" else length,
                    lower.get("content-md5", ""),
                    lower.get("content-type", ""),
                    "",  # Date: x-ms-date is sent instead
                    lower.get("if-modified-since", ""),
                    lower.get("if-match", ""),
                    lower.get("if-none-match", ""),
                    lower.get("if-unmodified-since", ""),
                    lower.get("range", ""),
                    "".join(f"{k}:{lower[k].strip()}\n" for k in sorted(lower) if k.startswith("x-ms-")) + resource,
                ]
            )
            signature = base64.b64encode(hmac.new(self._key, to_sign.encode(), hashlib.sha256).digest()).decode()
            out["Authorization"] = f"SharedKey {self.account}:{signature}"
        if query:
            url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
        return url, out

    # --- requests -------------------------------------------------------------------------------------------

    def _retrying(self) -> AsyncRetrying:
        return retrying(self._retry_attempts, self._retry_wait_s)

    async def _request(
        self,
        method: str,
        blob: str,
        what: str,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        content: Any = None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        url, signed = self._signed(method, blob, query or {}, headers or {})
        try:
            resp = await self._http.request(method, url, headers=signed, content=content)
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"Azure Blob Storage unreachable during {what}: {type(exc).__name__}: {exc}", details={"blob": blob}
            ) from exc
        if resp.status_code < 300 or resp.status_code in ok:
            return resp
        code, message = _error(resp)
        details = {"status": resp.status_code, "code": code, "blob": blob}
        text = f"Azure Blob Storage refused {what}: HTTP {resp.status_code} {code}: {message}"
        if resp.status_code >= 500 or resp.status_code in (408, 429) or code in _RETRYABLE_CODES:
            raise StorageUnavailable(text, details=details)
        if code == "ContainerNotFound":
            raise StorageRejected(
                f"container {self.container!r} does not exist: create it or fix STORAGE_URL", details=details
            )
        if resp.status_code in (401, 403):
            raise StorageRejected(f"{text}: check {_CREDENTIALS}", details=details)
        raise StorageRejected(text, details=details)

    async def _retried(self, *args: Any, **kw: Any) -> httpx.Response:
        async for attempt in self._retrying():
            with attempt:
                return await self._request(*args, **kw)
        raise AssertionError("unreachable")  # pragma: no cover

    async def put_block(self, blob: str, block: str, path: Path, offset: int, size: int) -> Block:
        """Send bytes [offset, offset+size) of ``path`` as block ``block``, streamed from disk (retried whole)."""
        what = f"uploading a block of {blob!r}"
        async for attempt in self._retrying():
            with attempt:
                await self._request(
                    "PUT",
                    blob,
                    what,
                    {"comp": "block", "blockid": block},
                    {"Content-Length": str(size)},
                    _file_range(path, offset, size),
                )
        return Block(block, size)

    async def uncommitted(self, blob: str) -> dict[str, Block]:
        """The uncommitted blocks the service holds for ``blob`` (none when it knows no such blob)."""
        resp = await self._retried(
            "GET",
            blob,
            f"listing the blocks of {blob!r}",
            {"comp": "blocklist", "blocklisttype": "uncommitted"},
            ok=(404,),
        )
        if resp.status_code == 404:
            return {}
        out: dict[str, Block] = {}
        for node in _xml(resp.content).iter("Block"):
            name, size = node.findtext("Name"), node.findtext("Size")
            if name and size:
                out[name] = Block(name, int(size))
        return out

    async def commit(self, blob: str, blocks: list[str], content_type: str, sha256: str | None = None) -> None:
        body = (
            '<?xml version="1.0" encoding="utf-8"?><BlockList>'
            + "".join(f"<Latest>{b}</Latest>" for b in blocks)
            + "</BlockList>"
        ).encode()
        headers = {
            "Content-Type": "application/xml",
            "Content-Length": str(len(body)),
            "x-ms-blob-content-type": content_type,
        }
        if sha256:
            headers[SHA256_META] = sha256
        await self._retried("PUT", blob, f"committing the blocks of {blob!r}", {"comp": "blocklist"}, headers, body)

    async def stored_as(self, blob: str, size: int, sha256: str | None) -> bool:
        """Whether a committed blob ``size`` bytes long (with ``x-ms-meta-sha256`` = ``sha256`` when given) is
        there: an earlier attempt committed this very upload."""
        resp = await self._retried("HEAD", blob, f"checking {blob!r}", ok=(404,))
        if resp.status_code != 200:
            return False
        same = resp.headers.get("Content-Length") == str(size)
        return same and (sha256 is None or resp.headers.get(SHA256_META) == sha256)

    async def discard(self, blob: str) -> None:
        """Drop the uncommitted blocks of ``blob`` when no committed blob of that name exists (commit an empty
        list, delete the empty blob); over a committed blob leave them to Azure's 7-day clean-up."""
        head = await self._retried("HEAD", blob, f"checking {blob!r}", ok=(404,))
        if head.status_code == 200:
            log.info("storage_blocks_left_to_expire", object_name=blob)
            return
        await self.commit(blob, [], "application/octet-stream")
        await self._retried("DELETE", blob, f"deleting the empty {blob!r}", ok=(404,))
        log.info("storage_multipart_aborted", object_name=blob)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


def _error(resp: httpx.Response) -> tuple[str, str]:
    """(Code, Message) of an Azure error, from the x-ms-error-code header or the XML body."""
    code = resp.headers.get("x-ms-error-code") or str(resp.status_code)
    try:
        root = _xml(resp.content)
        return root.findtext("Code") or code, (root.findtext("Message") or "").strip()[:300]
    except ET.ParseError:
        return code, resp.text.strip()[:300] or resp.reason_phrase
