"""Input downloads resume after a cut connection: a raw HTTP/1.1 server on 127.0.0.1 that closes the socket
mid-body, answers ranges exactly, partly, wrongly or not at all; every case ends with the right bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from comfy_worker.errors import InputUnavailable
from comfy_worker.inputs import fetch_url

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Seen:
    range: str | None
    if_range: str | None
    status: int = 0
    sent: int = 0  # body bytes written before the connection ended


@dataclass
class CuttingServer:
    """Serves PAYLOAD at any path. ``cuts[i]``: body bytes the i-th response sends before the socket is closed
    (None or past the list: the whole body). ``ranges``: "honor" (206 + Content-Range), "ignore" (always
    200), "wrong_start" / "wrong_total" (206 lying about the range), "pieces" (206 of at most ``piece``
    bytes), "refuse" (416). ``validators``: send ETag and Last-Modified."""

    cuts: list[int | None] = field(default_factory=list)
    ranges: str = "honor"
    validators: bool = True
    piece: int = 1024 * 1024
    payload: bytes = PAYLOAD
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    url: str = ""

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/media/clip.bin"
        return self.url

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        pairs = (line.partition(":") for line in head.split("\r\n")[1:] if line)
        headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
        seen = Seen(headers.get("range"), headers.get("if-range"))
        self.seen.append(seen)
        cut = self.cuts[len(self.seen) - 1] if len(self.seen) <= len(self.cuts) else None
        total = len(self.payload)
        match = re.match(r"bytes=(\d+)-$", seen.range or "")
        start = int(match.group(1)) if match else None
        status, body, extra = 200, self.payload, {}
        if start is not None and self.ranges != "ignore":
            if self.ranges == "refuse":
                status, body, extra = 416, b"", {"Content-Range": f"bytes */{total}"}
            else:
                end = total if self.ranges != "pieces" else min(total, start + self.piece)
                shown_start = start + 1 if self.ranges == "wrong_start" else start
                shown_total = total + 7 if self.ranges == "wrong_total" else total
                status, body = 206, self.payload[start:end]
                extra = {"Content-Range": f"bytes {shown_start}-{end - 1}/{shown_total}"}
        seen.status = status
        lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Partial Content'}", f"Content-Length: {len(body)}",
                 "Content-Type: application/octet-stream", "Connection: close", "Accept-Ranges: bytes"]  # fmt: skip
        if self.validators:
            lines += ['ETag: "v1"', "Last-Modified: Tue, 01 Jul 2025 10:00:00 GMT"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        out = body if cut is None else body[:cut]
        writer.write(out)
        seen.sent = len(out)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()  # after a cut: the client sees the body end short of Content-Length


@pytest.fixture
async def server() -> AsyncIterator[CuttingServer]:
    s = CuttingServer()
    await s.start()
    yield s
    await s.stop()


def kw(**overrides):  # type: ignore[no-untyped-def]
    base = {"max_bytes": 10_000_000, "timeout_s": 10.0, "allow_private": True, "retry_wait_s": 0.01}
    return {**base, **overrides}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_cut_download_resumes_where_the_bytes_stopped(server: CuttingServer, tmp_path: Path) -> None:
    server.cuts = [1_000_000, 1_500_000]
    got = await fetch_url(server.url, tmp_path, **kw())
    assert sha(got) == SHA
    assert [(s.range, s.if_range, s.status) for s in server.seen] == [
        (None, None, 200),
        ("bytes=1000000-", '"v1"', 206),
        (f"bytes={1_000_000 + 1_500_000}-", '"v1"', 206),
    ]
    assert sum(s.sent for s in server.seen) == len(PAYLOAD)  # no byte was downloaded twice
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.bin"]  # the .part file is gone


async def test_a_server_that_answers_ranges_in_pieces_is_followed_to_the_end(
    server: CuttingServer, tmp_path: Path
) -> None:
    # each 206 is complete for its own Content-Length but short of the file: the size check catches it
    server.cuts, server.ranges, server.piece = [500_000], "pieces", 1_000_000
    got = await fetch_url(server.url, tmp_path, **kw(retry_attempts=6))
    assert sha(got) == SHA
    assert [s.range for s in server.seen] == [None, "bytes=500000-", "bytes=1500000-", "bytes=2500000-"]


async def test_a_200_to_a_range_request_starts_over(server: CuttingServer, tmp_path: Path) -> None:
    server.cuts, server.ranges = [2_000_000], "ignore"
    got = await fetch_url(server.url, tmp_path, **kw())
    assert sha(got) == SHA
    assert [(s.range, s.status) for s in server.seen] == [(None, 200), ("bytes=2000000-", 200)]


@pytest.mark.parametrize("lie", ["wrong_start", "wrong_total"])
async def test_a_range_other_than_the_one_asked_for_starts_over(
    server: CuttingServer, tmp_path: Path, lie: str
) -> None:
    server.cuts, server.ranges = [1_000_000], lie
    got = await fetch_url(server.url, tmp_path, **kw())
    assert sha(got) == SHA
    assert [(s.range, s.status) for s in server.seen] == [(None, 200), ("bytes=1000000-", 206), (None, 200)]


async def test_a_refused_range_starts_over(server: CuttingServer, tmp_path: Path) -> None:
    server.cuts, server.ranges = [1_000_000], "refuse"
    got = await fetch_url(server.url, tmp_path, **kw())
    assert sha(got) == SHA
    assert [(s.range, s.status) for s in server.seen] == [(None, 200), ("bytes=1000000-", 416), (None, 200)]


async def test_without_a_validator_a_retry_starts_over(server: CuttingServer, tmp_path: Path) -> None:
    server.cuts, server.validators = [1_000_000], False
    got = await fetch_url(server.url, tmp_path, **kw())
    assert sha(got) == SHA
    assert [s.range for s in server.seen] == [None, None]


async def test_cut_every_time_ends_as_unavailable_and_leaves_nothing(server: CuttingServer, tmp_path: Path) -> None:
    server.cuts = [100_000] * 3
    with pytest.raises(InputUnavailable, match=r"clip\.bin"):
        await fetch_url(server.url, tmp_path, **kw(retry_attempts=3))
    assert [s.range for s in server.seen] == [None, "bytes=100000-", "bytes=200000-"]
    assert list(tmp_path.iterdir()) == []
