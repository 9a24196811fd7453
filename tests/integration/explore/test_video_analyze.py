"""video-analyze with both providers on a real ffmpeg-made video: noop (metadata and frame times), and http
against a local aiohttp server that parses and checks the multipart body; the API key never reaches output."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from comfy_worker.errors import InputRejected, ProviderFailed
from comfy_worker.explore.video import HttpProvider, NoopProvider, analyze_video, frame_times

REPO = Path(__file__).resolve().parents[3]
KEY = "sk-test-4f9a8b7c6d5e"


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """3 s of ffmpeg's test pattern, 160x120 at 10 fps, h264."""
    path = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)], check=True)
    return path


@dataclass
class Api:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_with: list[int] = field(default_factory=list)  # statuses to answer first, in order


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """A local analysis API: records each multipart request (parsed part by part) and answers JSON."""
    state = Api("")

    async def analyze(request: web.Request) -> web.Response:
        parts: list[dict[str, Any]] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            data = await part.read()
            parts.append({"name": part.name, "filename": part.filename,
                          "content_type": part.headers.get("Content-Type"), "data": bytes(data)})
        state.requests.append({"auth": request.headers.get("Authorization"),
                               "content_type": request.headers.get("Content-Type"), "parts": parts})
        if state.fail_with:
            return web.Response(status=state.fail_with.pop(0), text="try later")
        frames = [p for p in parts if p["name"] == "frames"]
        return web.json_response({"caption": "a test pattern", "frames_seen": len(frames)})

    app = web.Application()
    app.router.add_post("/v1/analyze", analyze)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1/analyze"
    yield state
    await runner.cleanup()


async def test_noop_provider_writes_metadata_and_evenly_spaced_frames(video: Path) -> None:
    out = await analyze_video(video, NoopProvider(), frames=6)
    assert out == video.with_name("clip_analysis.json")
    result = json.loads(out.read_text())
    meta = result["metadata"]
    assert (meta["width"], meta["height"], meta["fps"], meta["codec"]) == (160, 120, 10.0, "h264")
    assert meta["duration_s"] == pytest.approx(3.0, abs=0.05) and meta["frames"] == 30
    assert [f["seconds"] for f in result["frames"]] == frame_times(meta["duration_s"], 6)
    assert result["frames"][0]["seconds"] == pytest.approx(0.25, abs=0.01)
    assert result["provider"] == "noop" and "provider_response" not in result
    assert not (video.parent / "clip_frames").exists()
    kept = await analyze_video(video, NoopProvider(), frames=3, keep_frames=True)
    frames = [Path(f["path"]) for f in json.loads(kept.read_text())["frames"]]
    assert [f.name for f in frames] == ["frame_000.jpg", "frame_001.jpg", "frame_002.jpg"]
    assert all(f.read_bytes()[:2] == b"\xff\xd8" for f in frames)


async def test_bad_inputs_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(InputRejected, match="does not exist"):
        await analyze_video(tmp_path / "nope.mp4", NoopProvider())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(InputRejected, match="is not a readable video"):
        await analyze_video(junk, NoopProvider())


async def test_http_provider_posts_multipart_frames_and_metadata(video: Path, api: Api) -> None:
    out = await analyze_video(video, HttpProvider(api.url, api_key=KEY), frames=4)
    [req] = api.requests
    assert req["auth"] == f"Bearer {KEY}"
    assert req["content_type"].startswith("multipart/form-data; boundary=")
    names = [p["name"] for p in req["parts"]]
    assert names == ["metadata", "frames", "frames", "frames", "frames"]
    meta = json.loads(req["parts"][0]["data"])
    assert meta["width"] == 160 and [f["index"] for f in meta["frames"]] == [0, 1, 2, 3]
    assert req["parts"][0]["content_type"] == "application/json"
    for i, part in enumerate(req["parts"][1:]):
        assert part["filename"] == f"frame_{i:03d}.jpg" and part["content_type"] == "image/jpeg"
        assert part["data"][:2] == b"\xff\xd8" and len(part["data"]) > 500
    assert len({p["data"] for p in req["parts"][1:]}) == 4  # four different moments of the test pattern
    result = json.loads(out.read_text())
    assert result["provider_response"] == {"caption": "a test pattern", "frames_seen": 4}
    assert KEY not in out.read_text()


async def test_http_provider_retries_5xx_and_fails_at_once_on_4xx(video: Path, api: Api) -> None:
    api.fail_with = [503, 502]
    provider = HttpProvider(api.url, api_key=KEY, backoff_s=0.01)
    await analyze_video(video, provider, frames=2)
    assert len(api.requests) == 3
    api.requests.clear()
    api.fail_with = [401]
    with pytest.raises(ProviderFailed) as err:
        await analyze_video(video, provider, frames=2)
    assert len(api.requests) == 1 and not err.value.retryable and "401" in str(err.value)
    assert KEY not in str(err.value)


async def test_cli_reads_the_key_from_the_named_variable_and_never_prints_it(video: Path, api: Api) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ANALYSIS_KEY": KEY, "LOG_LEVEL": "debug", "LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", "video-analyze", str(video), "--provider", "http", "--api-base",
        api.url, "--api-key-env", "ANALYSIS_KEY", "--frames", "3", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == str(video.with_name("clip_analysis.json"))
    assert api.requests[-1]["auth"] == f"Bearer {KEY}"
    assert KEY not in out.decode() and KEY not in err.decode()
    assert "frames [" in err.decode()  # the progress bar
    env.pop("ANALYSIS_KEY")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", "video-analyze", str(video), "--provider", "http", "--api-base",
        api.url, "--api-key-env", "ANALYSIS_KEY", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await proc.communicate()
    assert proc.returncode != 0
    assert "--api-key-env ANALYSIS_KEY: the variable ANALYSIS_KEY is not set" in err.decode()
