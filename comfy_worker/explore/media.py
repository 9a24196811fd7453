"""ffprobe / ffmpeg for the exploration suite: video metadata, single frames, thumbnails. Each call is one
subprocess with a timeout; a failure raises InputRejected naming the file and ffmpeg's last words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from comfy_worker.errors import InputRejected
from comfy_worker.subproc import run_tool

VIDEO_EXT = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif"})
IMAGE_EXT = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
THUMB_WIDTH = 320
WEB_IMAGE_EXT = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
AS_IS_MAX_BYTES = 2 * 1024 * 1024


def shows_as_is(path: Path) -> bool:
    """A still image every browser shows, small enough to serve as its own thumbnail (no ffmpeg needed)."""
    return path.suffix.lower() in WEB_IMAGE_EXT and path.suffix.lower() != ".gif" and path.is_file() and (
        path.stat().st_size <= AS_IS_MAX_BYTES)


def thumbnail_source(outputs: list[Path]) -> Path | None:
    """The output a run's thumbnail shows: its first video, else its first image."""
    return next((p for p in outputs if p.suffix.lower() in VIDEO_EXT), None) or next(
        (p for p in outputs if p.suffix.lower() in IMAGE_EXT), None)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InputRejected(f"{name} is not installed (apt-get install ffmpeg, or run scripts/install.sh)")
    return path


async def _run(args: list[str], timeout_s: float) -> bytes:
    try:
        done = await run_tool(args, timeout_s=timeout_s)
    except TimeoutError:
        raise InputRejected(f"{Path(args[0]).name} took longer than {timeout_s:.0f} s") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise InputRejected(f"{Path(args[0]).name} failed ({done.returncode}): {' / '.join(tail)}")
    return done.stdout


async def probe(path: Path) -> dict[str, Any]:
    """Duration, size, frame rate, frame count, codec and bit rate of a video (or image)."""
    if not path.is_file():
        raise InputRejected(f"{path} does not exist")
    try:
        raw = await _run([_tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], 60)
    except InputRejected as exc:
        raise InputRejected(f"{path} is not a readable video: {exc}") from None
    info = json.loads(raw or b"{}")
    fmt = info.get("format") or {}
    video = next((s for s in info.get("streams") or [] if s.get("codec_type") == "video"), None)
    if video is None:
        raise InputRejected(f"{path} has no video stream")
    audio = next((s for s in info.get("streams") or [] if s.get("codec_type") == "audio"), None)
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    duration = _float(fmt.get("duration")) or _float(video.get("duration"))
    frames = int(video["nb_frames"]) if str(video.get("nb_frames", "")).isdigit() else None
    if frames is None and fps and duration:
        frames = round(fps * duration)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "format": fmt.get("format_name"),
        "duration_s": duration,
        "width": video.get("width"),
        "height": video.get("height"),
        "fps": round(fps, 3) if fps else None,
        "frames": frames,
        "codec": video.get("codec_name"),
        "pix_fmt": video.get("pix_fmt"),
        "bit_rate": int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
        "audio_codec": audio.get("codec_name") if audio else None,
    }


def _rate(text: Any) -> float | None:
    if not isinstance(text, str) or "/" not in text:
        return None
    num, den = text.split("/", 1)
    try:
        return float(num) / float(den) if float(den) else None
    except ValueError:
        return None


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


async def frame_at(video: Path, seconds: float, dest: Path, *, width: int | None = None) -> Path:
    """One frame at ``seconds`` as a JPEG (scaled to ``width`` when given)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    scale = ["-vf", f"scale={width}:-2"] if width else []
    args = [_tool("ffmpeg"), "-v", "error", "-y", "-ss", f"{max(seconds, 0):.3f}", "-i", str(video),
            "-frames:v", "1", *scale, "-q:v", "3", str(dest)]
    await _run(args, 120)
    if not dest.is_file() or dest.stat().st_size == 0:  # -ss past the last frame writes nothing
        await _run([*args[:4], "-sseof", "-0.5", *args[6:]], 120)
    return dest


async def thumbnail(src: Path, dest: Path) -> Path | None:
    """A small JPEG of an image, or of a video's middle frame; None when ffmpeg cannot read it."""
    try:
        if src.suffix.lower() in VIDEO_EXT:
            info = await probe(src)
            return await frame_at(src, (info["duration_s"] or 0) / 2, dest, width=THUMB_WIDTH)
        return await frame_at(src, 0, dest, width=THUMB_WIDTH)
    except InputRejected:
        return None
