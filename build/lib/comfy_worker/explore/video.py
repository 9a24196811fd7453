"""``comfy-worker video-analyze``: ffprobe metadata and N evenly sampled frames of a video, optionally sent to an
external analysis API; the result goes to ``<video>_analysis.json`` beside the video.

Providers:

* ``noop`` — nothing leaves the machine: the JSON has the metadata and the frames' times (and paths with
  ``--keep-frames``).
* ``http`` — one ``POST`` to ``--api-base`` (multipart/form-data): a ``metadata`` part (JSON: the ffprobe
  figures, the frame times) and one ``frames`` part per frame (``frame_000.jpg``, ``image/jpeg``, in time
  order), with ``Authorization: Bearer <key>`` when ``--api-key-env VAR`` names a variable holding the key. The
  key is read from the environment only, never written to logs or the JSON. The answer (JSON, else text) is
  stored under ``provider_response``. Network errors and 5xx are retried (3 tries, backoff); a 4xx fails at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from comfy_worker.errors import InputRejected, ProviderFailed
from comfy_worker.explore import media
from comfy_worker.logs import get_logger, register_secret

log = get_logger(__name__)


@dataclass(frozen=True)
class Frame:
    index: int
    seconds: float
    path: Path


class Provider(Protocol):
    name: str

    async def analyze(self, metadata: dict[str, Any], frames: list[Frame]) -> dict[str, Any] | str | None: ...


class NoopProvider:
    name = "noop"

    async def analyze(self, metadata: dict[str, Any], frames: list[Frame]) -> None:
        return None


class HttpProvider:
    name = "http"

    def __init__(self, api_base: str, *, api_key: str | None = None, timeout_s: float = 120.0, tries: int = 3,
                 backoff_s: float = 1.0) -> None:
        if not api_base.startswith(("http://", "https://")):
            raise InputRejected(f"--api-base {api_base!r} must be an http(s) URL")
        self.api_base = api_base
        self._key = api_key
        if api_key:
            register_secret(api_key)
        self.timeout_s = timeout_s
        self.tries = tries
        self.backoff_s = backoff_s

    async def analyze(self, metadata: dict[str, Any], frames: list[Frame]) -> dict[str, Any] | str:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        meta = json.dumps({**metadata, "frames": [{"index": f.index, "seconds": f.seconds} for f in frames]})
        last: ProviderFailed | None = None
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            for attempt in range(1, self.tries + 1):
                files: list[tuple[str, tuple[str | None, Any, str]]] = [
                    ("metadata", (None, meta, "application/json"))
                ]
                handles = [f.path.open("rb") for f in frames]
                try:
                    files += [("frames", (f.path.name, h, "image/jpeg")) for f, h in zip(frames, handles, strict=True)]
                    resp = await http.post(self.api_base, files=files, headers=headers)
                except httpx.HTTPError as exc:
                    last = ProviderFailed(f"analysis API at {self.api_base} not reachable ({type(exc).__name__})")
                else:
                    if resp.status_code < 400:
                        try:
                            return resp.json()
                        except ValueError:
                            return resp.text
                    body = resp.text[:300]
                    if self._key:
                        body = body.replace(self._key, "***")
                    last = ProviderFailed(f"analysis API answered {resp.status_code}: {body}",
                                          details={"status": resp.status_code}, retryable=resp.status_code >= 500)
                    if not last.retryable:
                        raise last
                finally:
                    for h in handles:
                        h.close()
                log.warning("video_analysis_retry", attempt=attempt, error=str(last))
                if attempt < self.tries:
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        assert last is not None
        raise last


def provider_from_args(name: str, api_base: str | None, api_key_env: str | None) -> Provider:
    if name == "noop":
        return NoopProvider()
    if name != "http":
        raise InputRejected(f"--provider {name!r}: use noop or http")
    if not api_base:
        raise InputRejected("--provider http needs --api-base URL (the analysis endpoint)")
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise InputRejected(f"--api-key-env {api_key_env}: the variable {api_key_env} is not set or empty; "
                                f"export {api_key_env}=<your key>")
    return HttpProvider(api_base, api_key=key)


def frame_times(duration: float, n: int) -> list[float]:
    """``n`` times spread evenly over the video: the middle of each of ``n`` equal slices."""
    return [round(duration * (i + 0.5) / n, 3) for i in range(n)]


async def analyze_video(video: Path, provider: Provider, *, frames: int = 8, keep_frames: bool = False,
                        output: Path | None = None, on_frame: Callable[[int], None] | None = None) -> Path:
    """Probe, sample ``frames`` frames, ask the provider; write and return ``<video>_analysis.json``."""
    if frames < 1:
        raise InputRejected(f"--frames must be at least 1, got {frames}")
    metadata = await media.probe(video)
    duration = metadata.get("duration_s") or 0.0
    if keep_frames:
        frames_dir = video.parent / f"{video.stem}_frames"
        frames_dir.mkdir(exist_ok=True)
    else:
        frames_dir = Path(tempfile.mkdtemp(prefix="cw-frames-"))
    try:
        sampled: list[Frame] = []
        for i, t in enumerate(frame_times(duration, frames)):
            path = await media.frame_at(video, t, frames_dir / f"frame_{i:03d}.jpg")
            sampled.append(Frame(i, t, path))
            if on_frame:
                on_frame(i)
        response = await provider.analyze(metadata, sampled)
        result: dict[str, Any] = {
            "video": str(video),
            "provider": provider.name,
            "metadata": metadata,
            "frames": [{"index": f.index, "seconds": f.seconds, **({"path": str(f.path)} if keep_frames else {})}
                       for f in sampled],
        }
        if provider.name != "noop":
            result["provider_response"] = response
        out = output or video.with_name(f"{video.stem}_analysis.json")
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        return out
    finally:
        if not keep_frames:
            shutil.rmtree(frames_dir, ignore_errors=True)
