"""Input downloads resume after a cut connection: a raw HTTP/1.1 server on 127.0.0.1 that closes the socket
mid-body, answers ranges exactly, partly, wrongly or not at all; every case ends with the right bytes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfy_worker.errors import InputUnavailable
from comfy_worker.inputs import fetch_url
from tests.http_cut_server import PAYLOAD, CuttingServer

SHA = hashlib.sha256(PAYLOAD).hexdigest()


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
