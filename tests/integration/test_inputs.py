"""Input fetching against real HTTP servers on 127.0.0.1 (aiohttp)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from comfy_worker.config import load_settings
from comfy_worker.errors import InputRejected, InputUnavailable
from comfy_worker.inputs import fetch_source, fetch_storage_input, fetch_url, settings_fetcher
from comfy_worker.storage import LocalStorage

PAYLOAD = os.urandom(200_000)


class Source:
    """A small HTTP server serving the cases under test and recording the paths it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.flaky_left = 0
        self.never = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/file/{name}", self.file)
        app.router.add_get("/chunked/{n}", self.chunked)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/flaky/{name}", self.flaky)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/stall", self.stall)

        @web.middleware
        async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.paths.append(request.path)
            return await handler(request)

        app.middlewares.append(record)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        self.never.set()
        assert self.runner is not None
        await self.runner.cleanup()

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/octet-stream")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        remaining = int(request.match_info["n"])
        while remaining > 0:
            n = min(remaining, 64 * 1024)
            await resp.write(b"z" * n)
            remaining -= n
        await resp.write_eof()
        return resp

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def flaky(self, request: web.Request) -> web.Response:
        if self.flaky_left > 0:
            self.flaky_left -= 1
            return web.Response(status=503, text="busy")
        return web.Response(body=PAYLOAD)

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def stall(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"a" * 10)
        await self.never.wait()  # never sends the rest while the test runs
        return resp


@pytest.fixture
async def source() -> AsyncIterator[Source]:
    s = Source()
    await s.start()
    yield s
    await s.stop()


def fetch_kw(**overrides):  # type: ignore[no-untyped-def]
    kw = {"max_bytes": 10_000_000, "timeout_s": 10.0, "allow_private": True, "retry_wait_s": 0.01}
    kw.update(overrides)
    return kw


async def test_downloads_to_a_file_named_after_the_url(source: Source, tmp_path: Path) -> None:
    got = await fetch_url(f"{source.base}/file/clip%20one.mp4?sig=secret", tmp_path / "in", **fetch_kw())
    assert got == tmp_path / "in" / "clip_one.mp4"
    assert got.read_bytes() == PAYLOAD
    assert [p.name for p in got.parent.iterdir()] == ["clip_one.mp4"]


async def test_given_filename_is_sanitised(source: Source, tmp_path: Path) -> None:
    got = await fetch_url(f"{source.base}/file/x", tmp_path, filename="../../evil name.png", **fetch_kw())
    assert got == tmp_path / "evil_name.png"


async def test_loopback_is_refused_before_connecting(source: Source, tmp_path: Path) -> None:
    url = f"{source.base}/file/a.mp4"
    with pytest.raises(InputRejected) as info:
        await fetch_url(url, tmp_path, **fetch_kw(allow_private=False))
    assert str(info.value) == (
        f"input URL {url} resolves to 127.0.0.1, a loopback address; "
        "set ALLOW_PRIVATE_URLS=true or add the host to INPUT_URL_ALLOWLIST"
    )
    assert not info.value.retryable
    assert source.paths == []


async def test_an_allowlisted_host_may_be_private(source: Source, tmp_path: Path) -> None:
    got = await fetch_url(
        f"{source.base}/file/a.mp4", tmp_path, **fetch_kw(allow_private=False, allowlist=("127.0.0.1",))
    )
    assert got.read_bytes() == PAYLOAD


async def test_a_redirect_to_a_private_address_is_refused(source: Source, tmp_path: Path) -> None:
    port = source.base.rsplit(":", 1)[1]
    target = f"http://127.0.0.1:{port}/file/secret.bin"
    url = f"http://localhost:{port}/redirect?to={target}"
    with pytest.raises(InputRejected) as info:
        await fetch_url(url, tmp_path, **fetch_kw(allow_private=False, allowlist=("localhost",)))
    assert (
        f"input URL {target} (redirected from http://localhost:{port}/redirect) resolves to 127.0.0.1"
        in str(info.value)
    )
    assert source.paths == ["/redirect"]
    assert list(tmp_path.iterdir()) == []


async def test_redirects_are_followed_when_allowed(source: Source, tmp_path: Path) -> None:
    url = f"{source.base}/redirect?to=/file/target.mp4"
    got = await fetch_url(url, tmp_path, filename="video.mp4", **fetch_kw())
    assert got.read_bytes() == PAYLOAD
    assert source.paths == ["/redirect", "/file/target.mp4"]


async def test_endless_redirects_are_refused(source: Source, tmp_path: Path) -> None:
    with pytest.raises(InputRejected, match="redirected more than 5 times"):
        await fetch_url(f"{source.base}/loop", tmp_path, **fetch_kw())
    assert len(source.paths) == 6


async def test_oversize_by_content_length_is_refused_up_front(source: Source, tmp_path: Path) -> None:
    with pytest.raises(InputRejected) as info:
        await fetch_url(f"{source.base}/file/a.bin", tmp_path, **fetch_kw(max_bytes=1000))
    assert "is 200000 bytes, over INPUT_MAX_BYTES (1000)" in str(info.value)
    assert list(tmp_path.iterdir()) == []


async def test_oversize_without_content_length_is_cut_off_while_streaming(
    source: Source, tmp_path: Path
) -> None:
    with pytest.raises(InputRejected, match=r"larger than INPUT_MAX_BYTES \(100000\)"):
        await fetch_url(f"{source.base}/chunked/5000000", tmp_path, **fetch_kw(max_bytes=100_000))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part remains


async def test_streamed_body_within_the_cap_is_kept(source: Source, tmp_path: Path) -> None:
    got = await fetch_url(f"{source.base}/chunked/300000", tmp_path, **fetch_kw(max_bytes=300_000))
    assert got.stat().st_size == 300_000


async def test_404_is_permanent_and_not_retried(source: Source, tmp_path: Path) -> None:
    url = f"{source.base}/status/404"
    with pytest.raises(InputRejected) as info:
        await fetch_url(url, tmp_path, **fetch_kw())
    assert str(info.value) == f"input URL {url} answered HTTP 404"
    assert info.value.details["status"] == 404
    assert source.paths == ["/status/404"]


async def test_503_then_200_is_retried(source: Source, tmp_path: Path) -> None:
    source.flaky_left = 1
    got = await fetch_url(f"{source.base}/flaky/v.mp4", tmp_path, **fetch_kw())
    assert got.read_bytes() == PAYLOAD
    assert source.paths == ["/flaky/v.mp4", "/flaky/v.mp4"]


async def test_persistent_5xx_ends_retryable(source: Source, tmp_path: Path) -> None:
    with pytest.raises(InputUnavailable, match="answered HTTP 502") as info:
        await fetch_url(f"{source.base}/status/502", tmp_path, **fetch_kw(retry_attempts=3))
    assert info.value.retryable
    assert len(source.paths) == 3


async def test_a_stalled_download_times_out_as_retryable(source: Source, tmp_path: Path) -> None:
    with pytest.raises(InputUnavailable, match="ReadTimeout"):
        await fetch_url(f"{source.base}/stall", tmp_path, **fetch_kw(timeout_s=0.3, retry_attempts=1))
    assert list(tmp_path.iterdir()) == []


async def test_connection_refused_is_retryable(tmp_path: Path) -> None:
    s = Source()
    base = await s.start()
    await s.stop()
    with pytest.raises(InputUnavailable, match="ConnectError"):
        await fetch_url(f"{base}/file/a", tmp_path, **fetch_kw(retry_attempts=2))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.mp4", "not a url"])
async def test_only_http_and_https(url: str, tmp_path: Path) -> None:
    with pytest.raises(InputRejected):
        await fetch_url(url, tmp_path, **fetch_kw())


async def test_settings_fetcher_applies_the_settings(source: Source, tmp_path: Path) -> None:
    strict = settings_fetcher(load_settings({}))
    with pytest.raises(InputRejected, match="a loopback address"):
        await strict(f"{source.base}/file/a.bin", tmp_path)
    small = settings_fetcher(load_settings({"ALLOW_PRIVATE_URLS": "true", "INPUT_MAX_BYTES": "100"}))
    with pytest.raises(InputRejected, match="over INPUT_MAX_BYTES"):
        await small(f"{source.base}/file/a.bin", tmp_path)
    ok = settings_fetcher(load_settings({"INPUT_URL_ALLOWLIST": "example.com, 127.0.0.1"}))
    assert (await ok(f"{source.base}/file/a.bin", tmp_path)).read_bytes() == PAYLOAD


async def test_fetch_storage_input(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    src = tmp_path / "v.mp4"
    src.write_bytes(PAYLOAD)
    await storage.upload(src, "uploads/u1/v.mp4")
    got = await fetch_storage_input(storage, "uploads/u1/v.mp4", tmp_path / "work")
    assert got == tmp_path / "work" / "v.mp4"
    assert got.read_bytes() == PAYLOAD
    with pytest.raises(InputRejected, match=r"input storage_path 'uploads/u1/none\.mp4'"):
        await fetch_storage_input(storage, "uploads/u1/none.mp4", tmp_path / "work")


async def test_a_storage_path_input_takes_its_filename_or_stem_like_a_url(tmp_path: Path) -> None:
    """``{storage_path, filename}``: the file is named ``filename`` (it was named after the object, the filename
    dropped); without one, a handler's ``stem`` plus the object's extension, as for a URL."""
    storage = LocalStorage(tmp_path / "store")
    src = tmp_path / "v.mp4"
    src.write_bytes(PAYLOAD)
    await storage.upload(src, "uploads/u1/blob")
    fetch = settings_fetcher(load_settings({}))
    spec = {"storage_path": "uploads/u1/blob", "filename": "clip.mp4"}
    got = await fetch_source(spec, tmp_path / "a", fetch=fetch, storage=storage, max_bytes=len(PAYLOAD))
    assert got == tmp_path / "a" / "clip.mp4" and got.read_bytes() == PAYLOAD
    await storage.upload(src, "uploads/u1/v.mp4")
    spec = {"storage_path": "uploads/u1/v.mp4"}
    got = await fetch_source(spec, tmp_path / "b", fetch=fetch, storage=storage, max_bytes=len(PAYLOAD), stem="guide")
    assert got == tmp_path / "b" / "guide.mp4" and got.read_bytes() == PAYLOAD
