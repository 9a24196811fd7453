"""Fetch one model file: resolve where it comes from, stream it to a partial file, resume, verify.

Hub files: huggingface-hub resolves the file (``HF_ENDPOINT``, revision, ``HF_TOKEN`` auth) and reads the
hub's metadata — the LFS sha256 (``X-Linked-Etag``), the size (``X-Linked-Size``) and the CDN location it
redirects to. The bytes are then streamed by the same code as plain URLs (httpx), because resuming matters
more than anything for 14 GB files on pods that can vanish: huggingface-hub 2.x downloads to a process-unique
temporary file and deletes it on failure, so a pod stopped at 13 of 14 GB would start again from zero.

Here the partial file lives on the models volume (``.comfy-worker/downloads/``) with a small JSON sidecar
saying what it is; the next try — in the same run after a cut, or a later run on any pod — hashes what is
there and continues with ``Range: bytes=N-``. Memory stays at one chunk. Every file is checked against the
manifest's sha256, else the hub's, before it is moved into place; a mismatch is discarded and refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from comfy_worker.errors import ModelDownloadFailed, ModelRejected
from comfy_worker.models_manifest.manifest import HubSource, ModelEntry, UrlSource

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Progress(Protocol):
    def start(self, label: str, total: int | None, done: int = 0) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    def start(self, label: str, total: int | None, done: int = 0) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class Resolved:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    sha256: str | None = None  # what the source publishes (the hub's LFS hash); None for plain URLs
    describe: str = ""


def resolve(entry: ModelEntry, *, timeout: float = 30.0) -> Resolved:
    """Where to GET ``entry`` from; for hub files also the hub's size and sha256 (one HEAD request)."""
    if isinstance(entry.source, UrlSource):
        return Resolved(entry.source.url, describe=entry.source.url)
    if isinstance(entry.source, HubSource):
        return _resolve_hub(entry.source, timeout)
    raise ModelRejected(f"{entry.relpath} has no hub or url in the manifest: copy it into place by hand")


def _resolve_hub(src: HubSource, timeout: float) -> Resolved:
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers

    endpoint = os.environ.get("HF_ENDPOINT") or None
    url = hf_hub_url(src.repo, src.file, revision=src.revision, repo_type=src.repo_type, endpoint=endpoint)
    where = src.describe()
    try:
        meta = get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise ModelRejected(
                f"{where}: the hub refused access (HTTP {status}); the repository is gated or private: accept its "
                "terms on huggingface.co and set HF_TOKEN to a token with access"
            ) from None
        if status == 404:
            raise ModelRejected(
                f"{where}: not found on the hub (HTTP 404): check hub.repo, hub.file and hub.revision"
            ) from None
        if status in _TRANSIENT_STATUS or status >= 500:
            raise ModelDownloadFailed(f"{where}: the hub answered HTTP {status}; try again") from None
        raise ModelRejected(f"{where}: the hub answered HTTP {status}: {exc}") from None
    except (httpx2.HTTPError, OSError) as exc:
        raise ModelDownloadFailed(f"{where}: cannot reach the hub ({type(exc).__name__}: {exc})") from None
    headers = build_hf_headers(headers={"Accept-Encoding": "identity"})
    location = meta.location or url
    if _origin(location) != _origin(url):
        headers.pop("authorization", None)  # a signed CDN URL: the token never leaves the hub's origin
    etag = (meta.etag or "").strip('"').lower()
    return Resolved(location, headers, meta.size, etag if _SHA256.match(etag) else None, where)


def _origin(url: str) -> tuple[str, str, int | None]:
    u = httpx.URL(url)
    return u.scheme, u.host, u.port


def hash_file(path: Path, progress: Progress, label: str) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    progress.start(label, size)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            progress.advance(len(block))
    progress.finish()
    return h.hexdigest()


def download(
    entry: ModelEntry,
    resolved: Resolved,
    partial: Path,
    *,
    client: httpx.Client,
    progress: Progress,
    expected_sha: str | None,
    retries: int = 5,
    backoff_s: float = 2.0,
    lost: Callable[[], bool] = lambda: False,
) -> str:
    """Stream ``resolved`` into ``partial`` (resuming what is there); return its sha256 once complete and
    verified. ModelDownloadFailed (partial kept) when the source keeps failing; ModelRejected otherwise."""
    size = entry.size or resolved.size
    if entry.size and resolved.size and entry.size != resolved.size:
        raise ModelRejected(
            f"{entry.relpath}: the manifest says {entry.size} bytes but {resolved.describe} has {resolved.size}: "
            "the file changed upstream or the manifest is wrong; nothing was downloaded"
        )
    partial.parent.mkdir(parents=True, exist_ok=True)
    sidecar = partial.with_name(partial.name + ".json")
    identity = {"source": resolved.describe, "sha256": expected_sha, "size": size}
    if partial.exists() and _read_json(sidecar) != identity:
        partial.unlink()  # a partial of something else (another source, another version): start over
    sidecar.write_text(json.dumps(identity))

    st = _State()
    if partial.exists() and partial.stat().st_size:
        progress.message(f"{entry.relpath}: resuming at {partial.stat().st_size} bytes (checking what is there)")
        with partial.open("rb") as f:
            while block := f.read(CHUNK):
                st.hasher.update(block)
                st.offset += len(block)
    failure = ""
    for attempt in range(retries + 1):
        if lost():
            raise ModelDownloadFailed(f"{entry.relpath}: another process broke this download's lock; stopped")
        if size is not None and st.offset == size:
            break
        try:
            _one_request(entry, resolved, partial, client, progress, st, size, lost)
            if size is None or st.offset >= size:
                break
            failure = f"the connection ended at {st.offset} of {size} bytes"
        except _Transient as exc:
            failure = str(exc)
        if attempt < retries:
            delay = min(backoff_s * 2**attempt, 60.0)
            progress.message(f"{entry.relpath}: {failure}; resuming in {delay:.0f} s (try {attempt + 2}/{retries + 1})")
            time.sleep(delay)
    else:
        raise ModelDownloadFailed(
            f"{entry.relpath}: {failure}; kept {st.offset} bytes in {partial}, run `comfy-worker models sync` "
            "again to resume"
        )
    offset, hasher = st.offset, st.hasher
    got = hasher.hexdigest()
    if size is not None and offset != size:
        _discard(partial, sidecar)
        raise ModelRejected(f"{entry.relpath}: got {offset} bytes, expected {size}; the download was discarded")
    want = expected_sha or resolved.sha256
    if want is not None and got != want:
        _discard(partial, sidecar)
        whose = "the manifest" if expected_sha else "the hub"
        raise ModelRejected(
            f"{entry.relpath}: sha256 {got} does not match {want} ({whose}); the download was discarded "
            "and nothing was installed"
        )
    with partial.open("rb+") as f:
        os.fsync(f.fileno())
    with contextlib.suppress(FileNotFoundError):
        sidecar.unlink()
    return got


class _Transient(Exception):
    pass


@dataclass
class _State:
    """Bytes in the partial file and their running hash; both always describe the file as written."""

    offset: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    etag: str | None = None

    def restart(self, partial: Path) -> None:
        partial.write_bytes(b"")
        self.offset, self.hasher, self.etag = 0, hashlib.sha256(), None


def _one_request(
    entry: ModelEntry,
    resolved: Resolved,
    partial: Path,
    client: httpx.Client,
    progress: Progress,
    st: _State,
    size: int | None,
    lost: Callable[[], bool],
) -> None:
    headers = dict(resolved.headers)
    if st.offset:
        headers["Range"] = f"bytes={st.offset}-"
        if st.etag and not st.etag.startswith("W/"):
            headers["If-Range"] = st.etag  # the server sends the whole (new) file if it changed meanwhile
    try:
        with client.stream("GET", resolved.url, headers=headers) as r:
            if r.status_code == 416 and st.offset:
                if _total_from_range(r.headers.get("content-range")) == st.offset:
                    return
                progress.message(f"{entry.relpath}: the partial file does not fit the source; starting over")
                st.restart(partial)
                raise _Transient("the partial file did not fit the source")
            if r.status_code in _TRANSIENT_STATUS or r.status_code >= 500:
                raise _Transient(f"{resolved.describe} answered HTTP {r.status_code}")
            if r.status_code >= 400:
                hint = " (set HF_TOKEN for gated or private repositories)" if r.status_code in (401, 403) else ""
                raise ModelRejected(f"{entry.relpath}: {resolved.describe} answered HTTP {r.status_code}{hint}")
            st.etag = r.headers.get("etag") or st.etag
            if r.status_code == 206:
                m = _CONTENT_RANGE.match(r.headers.get("content-range", ""))
                if not m or int(m.group(1)) != st.offset:
                    raise _Transient(f"{resolved.describe} answered a range that does not start at {st.offset}")
                total = int(m.group(3)) if m.group(3) != "*" else None
            else:  # 200: the whole file (no resume support, or If-Range said it changed)
                if st.offset:
                    progress.message(f"{entry.relpath}: the source does not resume here; starting over")
                etag = st.etag
                st.restart(partial)
                st.etag = etag
                length = r.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
            if size is not None and total is not None and total != size:
                raise ModelRejected(
                    f"{entry.relpath}: {resolved.describe} serves {total} bytes, expected {size}; nothing installed"
                )
            progress.start(entry.relpath, total if total is not None else size, st.offset)
            try:
                with partial.open("ab") as f:
                    for block in r.iter_raw():  # as received: nothing buffered is lost to a cut
                        f.write(block)
                        st.hasher.update(block)
                        st.offset += len(block)
                        progress.advance(len(block))
                        if lost():
                            raise ModelDownloadFailed(f"{entry.relpath}: lost the download lock; stopped")
            finally:
                progress.finish()
    except httpx.HTTPError as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None


def _total_from_range(value: str | None) -> int | None:
    m = re.match(r"^bytes \*/(\d+)$", value or "")
    return int(m.group(1)) if m else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _discard(partial: Path, sidecar: Path) -> None:
    for p in (partial, sidecar):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
