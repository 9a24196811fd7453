"""A raw HTTP/1.1 server on 127.0.0.1 that cuts connections mid-body and answers ranges exactly, partly, wrongly
or not at all: for the input-resume tests and bench/bench_transfers.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)


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
