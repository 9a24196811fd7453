"""A file server on 127.0.0.1 for `comfy-worker models sync` tests, with a stand-in for the Hugging Face hub's
file-resolution surface.

Plain files (``/files/<name>``) are served by aiohttp's own ``FileResponse``: real HTTP with real ``Range``,
``ETag`` and ``If-Range`` handling, nothing of ours. Only when a test injects a fault does a small handler of
ours serve the bytes instead: it honours ``Range: bytes=N-`` and then cuts the connection after a given
number of bytes, or holds the response after the first chunk until the test releases it.

**Stand-in for huggingface.co** (no network here): ``HEAD|GET /<owner>/<repo>/resolve/<revision>/<path>``
answers like the hub does for an LFS/Xet-stored file — ``302`` to the file's storage location on another
origin (here a second port, ``/cdn/blob-<sha256>``, served like a plain file), with ``X-Repo-Commit``,
``X-Linked-Etag`` (the file's sha256), ``X-Linked-Size`` and ``ETag``; ``404`` with ``X-Error-Code:
EntryNotFound`` / ``RepoNotFound``; ``401`` with ``X-Error-Code: GatedRepo`` for a gated repository
requested without the right ``Authorization: Bearer``.
That is the surface huggingface-hub's ``hf_hub_url`` + ``get_hf_file_metadata`` read (documented in
huggingface_hub's file_download.py and the hub's HTTP API). Simplified: no Xet reconstruction API (the
``X-Xet-Hash`` header is never sent, so clients take the plain-HTTP path), no ``/api`` endpoints, no
relative redirects for renamed repositories, revisions are only names.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_LOGGED = web.RequestKey("logged", object)
_CHUNK = 64 * 1024


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int = 0
    sent: int = 0


@dataclass
class _Fault:
    cut_after: int | None = None  # bytes of this response, then drop the connection
    hold: threading.Event | None = None  # after the first chunk, wait for this
    started: threading.Event = field(default_factory=threading.Event)


@dataclass
class _HubFile:
    sha256: str  # what the hub advertises
    size: int
    blob: str  # /cdn/<blob>


class ModelFileServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log: list[Logged] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._hub: dict[tuple[str, str, str], _HubFile] = {}
        self._gated: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.cdn_port = 0

    # --- content --------------------------------------------------------------------------------------------

    def add_file(self, name: str, data: bytes) -> str:
        """Serve ``data`` at ``/files/<name>``; returns its URL."""
        (self.root / name).write_bytes(data)
        return f"{self.base_url}/files/{name}"

    def add_hub_file(
        self, repo: str, path: str, data: bytes, *, revision: str = "main", advertise_sha256: str | None = None
    ) -> str:
        """Put ``data`` in the hub stand-in at ``repo``/``path``; returns its real sha256. ``advertise_sha256``
        makes the hub claim another hash than the bytes have (a corrupted upload or a tampered mirror)."""
        sha = hashlib.sha256(data).hexdigest()
        (self.root / f"blob-{sha}").write_bytes(data)
        self._hub[(repo, revision, path)] = _HubFile(advertise_sha256 or sha, len(data), f"blob-{sha}")
        return sha

    def gate_repo(self, repo: str, token: str) -> None:
        self._gated[repo] = token

    # --- faults ---------------------------------------------------------------------------------------------

    def cut(self, name: str, after: int) -> None:
        """The next GET of ``/files/<name>`` (or a hub blob name) sends ``after`` bytes, then drops the connection."""
        self._faults.setdefault(name, []).append(_Fault(cut_after=after))

    def hold(self, name: str) -> tuple[threading.Event, threading.Event]:
        """The next GET of ``name`` sends one chunk, sets ``started``, then waits until ``release`` is set."""
        fault = _Fault(hold=threading.Event())
        self._faults.setdefault(name, []).append(fault)
        assert fault.hold is not None
        return fault.started, fault.hold

    def gets(self, path_suffix: str) -> list[Logged]:
        return [e for e in self.log if e.method == "GET" and e.path.endswith(path_suffix)]

    # --- server ---------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ModelFileServer:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.on_response_prepare.append(self._prepared)
            app.router.add_route("*", "/files/{name}", self._file)
            app.router.add_route("*", "/cdn/{name}", self._file)
            app.router.add_route("*", "/{owner}/{repo}/resolve/{revision}/{path:.+}", self._resolve)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            cdn = web.TCPSite(self._runner, "127.0.0.1", 0)  # another origin, like the hub's storage CDN
            self._loop.run_until_complete(cdn.start())
            self.cdn_port = cdn._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="model-file-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        for faults in self._faults.values():
            for f in faults:
                if f.hold is not None:
                    f.hold.set()
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # --- handlers -------------------------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        entry = Logged(request.method, request.path, request.headers.get("Range"), request.headers.get("Authorization"))
        self.log.append(entry)
        request[_LOGGED] = entry
        path = self.root / request.match_info["name"]
        if not path.is_file():
            entry.status = 404
            return web.Response(status=404, text="not found")
        faults = self._faults.get(request.match_info["name"])
        if request.method == "GET" and faults:
            return await self._faulty(request, path, faults.pop(0), entry)
        return web.FileResponse(path)  # status and length are logged as aiohttp prepares the response

    async def _faulty(self, request: web.Request, path: Path, fault: _Fault, entry: Logged) -> web.StreamResponse:
        data = path.read_bytes()
        start = 0
        rng = request.headers.get("Range", "")
        resp = web.StreamResponse(status=200)
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            resp.set_status(206)
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp.content_length = len(data) - start
        entry.status = resp.status
        request[_LOGGED] = None  # this handler counts what it really sends
        await resp.prepare(request)
        pos = start
        while pos < len(data):
            block = data[pos : pos + _CHUNK]
            if fault.cut_after is not None and entry.sent + len(block) > fault.cut_after:
                block = block[: fault.cut_after - entry.sent]
                await resp.write(block)
                entry.sent += len(block)
                assert request.transport is not None
                request.transport.close()  # the connection dies mid-body
                return resp
            await resp.write(block)
            pos += len(block)
            entry.sent += len(block)
            if fault.hold is not None and not fault.started.is_set():
                fault.started.set()
                await asyncio.get_running_loop().run_in_executor(None, fault.hold.wait)
        await resp.write_eof()
        return resp

    async def _resolve(self, request: web.Request) -> web.Response:
        m = request.match_info
        repo = f"{m['owner']}/{m['repo']}"
        auth = request.headers.get("Authorization")
        self.log.append(Logged(request.method, request.path, request.headers.get("Range"), auth))
        headers: dict[str, Any] = {"X-Repo-Commit": COMMIT}
        if repo in self._gated and auth != f"Bearer {self._gated[repo]}":
            return self._logged(
                web.Response(
                    status=401,
                    headers={"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"},
                )
            )
        if not any(k[0] == repo for k in self._hub):
            return self._logged(web.Response(status=404, headers={"X-Error-Code": "RepoNotFound"}))
        f = self._hub.get((repo, m["revision"], m["path"]))
        if f is None:
            return self._logged(web.Response(status=404, headers={**headers, "X-Error-Code": "EntryNotFound"}))
        headers.update(
            {
                "Location": f"http://127.0.0.1:{self.cdn_port}/cdn/{f.blob}",
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
                "ETag": f'"{f.sha256}"',
            }
        )
        return self._logged(web.Response(status=302, headers=headers))

    async def _prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        entry = request.get(_LOGGED)
        if entry is not None and not entry.status:
            entry.status = response.status
            if request.method == "GET" and response.content_length is not None and response.status < 300:
                entry.sent = response.content_length

    def _logged(self, resp: web.Response) -> web.Response:
        self.log[-1].status = resp.status
        return resp
