"""Join chain segments into one video with ffmpeg, in time linear in the number of segments.

* Segments with the same codec, size, pixel format and frame rate and no overlap: the concat demuxer with
  stream copy (no re-encode at all: cost is reading and writing the bytes once).
* Same parameters with an overlap (the first ``overlap`` frames of each segment after the first repeat the
  end of the previous one): the concat demuxer decodes the files in turn and one re-encode drops the overlap
  frames by index (frame-exact).
* Different codecs/sizes: exactly one re-encode through the concat filter, trimming the overlap and
  normalising every segment to the first one's size and pixel format and retiming its frames onto the
  first one's frame rate (every frame kept once).

``keep`` generalises the overlap: per segment ``(skip, count)``, the frames ``[skip, skip + count)`` go into the
output (``count`` None: every frame after ``skip``). The chain uses it to drop both a chunk's overlap and the
frames it rendered past its share (Wan renders 4k+1 frames; a last chunk of 96 frames renders 97).

The progressive alternative (each combine re-encodes the whole video so far) costs O(N²) frames encoded;
see bench/bench_join.py. Failures raise :class:`~comfy_worker.errors.ExecutionFailed` with the tail of
ffmpeg's output in ``details['stderr_tail']``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from comfy_worker.errors import ExecutionFailed, InputRejected
from comfy_worker.logs import get_logger
from comfy_worker.subproc import find_tool, run_tool

log = get_logger(__name__)

ENCODE_ARGS = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p")


@dataclass(frozen=True)
class StreamInfo:
    codec: str
    width: int
    height: int
    pix_fmt: str
    frame_rate: str  # r_frame_rate as ffprobe prints it, e.g. "30/1"
    frames: int  # packets counted by ffprobe (one per frame for the codecs we write)
    has_audio: bool

    def compatible(self, other: StreamInfo) -> bool:
        return (self.codec, self.width, self.height, self.pix_fmt, Fraction(self.frame_rate)) == (
            other.codec, other.width, other.height, other.pix_fmt, Fraction(other.frame_rate),
        )  # fmt: skip


@dataclass(frozen=True)
class JoinResult:
    output: Path
    mode: str  # "copy" or "reencode"
    frames: int
    expected_frames: int
    seconds: float


async def _run(tool: str, args: Sequence[str], *, what: str) -> str:
    done = await run_tool([find_tool(tool, what=what), *args])
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace")[-2000:]
        raise ExecutionFailed(
            f"{what}: {tool} exited with status {done.returncode}",
            details={"tool": tool, "returncode": done.returncode, "stderr_tail": tail},
        )
    return done.stdout.decode("utf-8", "replace")


def file_arg(path: str | Path) -> str:
    """A file as an ffmpeg/ffprobe argument: absolute, so a name can never read as an option (``-x``) or a
    protocol (``http:…``, ``concat:…``) whatever directory or name it has."""
    return str(Path(path).absolute())


def _frame_rate(raw: Any) -> str:
    """ffprobe's r_frame_rate as ``num/den``; it goes into filter graphs, so nothing else gets through."""
    try:
        rate = Fraction(str(raw or "0/1"))
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    return f"{rate.numerator}/{rate.denominator}"


async def _probe_streams(path: str | Path, count: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fields = "codec_type,codec_name,width,height,pix_fmt,r_frame_rate,nb_frames,nb_read_frames,nb_read_packets"
    args = ["-v", "error", *([count] if count else []), "-show_entries", f"stream={fields}", "-of", "json"]
    text = await _run("ffprobe", [*args, file_arg(path)], what=f"probe {path}")
    streams = json.loads(text).get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None:
        raise InputRejected(f"{path}: no video stream", details={"path": str(path)})
    return video, streams


async def probe(path: str | Path, *, decode: bool = False) -> StreamInfo:
    """The first video stream of ``path``. Frames come from the container's count (mp4 has one), else from
    counting packets; ``decode=True`` decodes and counts every frame (exact, slower)."""
    video, streams = await _probe_streams(path, "-count_frames" if decode else None)
    field = "nb_read_frames" if decode else "nb_frames"
    if not decode and not str(video.get("nb_frames") or "").isdigit():
        video, streams = await _probe_streams(path, "-count_packets")  # no frame count in the container
        field = "nb_read_packets"
    return StreamInfo(
        codec=str(video.get("codec_name")),
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        pix_fmt=str(video.get("pix_fmt")),
        frame_rate=_frame_rate(video.get("r_frame_rate")),
        frames=int(video.get(field) or 0),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
    )


async def count_frames(path: str | Path, *, decode: bool = False) -> int:
    return (await probe(path, decode=decode)).frames


def _concat_list(paths: Sequence[Path]) -> str:
    lines = []
    for p in paths:
        if "\n" in str(p) or "\r" in str(p):  # a line break would start a directive of its own in the listing
            raise InputRejected(f"segment {str(p)!r}: a line break in the path", details={"path": str(p)})
        escaped = str(p.resolve()).replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
    return "\n".join(lines) + "\n"


Keep = tuple[int, int | None]  # (frames skipped at the start, frames kept after them or None: the rest)


def _drop_frames(infos: Sequence[StreamInfo], keep: Sequence[Keep]) -> str:
    """A select filter (with trailing comma) keeping only each segment's ``keep`` range, by the frame index
    in the concatenated stream; empty when every frame is kept."""
    ranges, start = [], 0
    for info, (skip, count) in zip(infos, keep, strict=True):
        if skip:
            ranges.append(f"between(n,{start},{start + skip - 1})")
        end = skip + count if count is not None else info.frames
        if end < info.frames:
            ranges.append(f"between(n,{start + end},{start + info.frames - 1})")
        start += info.frames
    return f"select='not({'+'.join(ranges)})'," if ranges else ""


def _filter_graph(infos: Sequence[StreamInfo], keep: Sequence[Keep]) -> str:
    first = infos[0]
    parts, labels = [], []
    for i, (_info, (skip, count)) in enumerate(zip(infos, keep, strict=True)):
        chain = [f"[{i}:v]"]
        filters = []
        if skip or count is not None:
            filters.append(f"trim=start_frame={skip}" + (f":end_frame={skip + count}" if count is not None else ""))
        # Retime every frame onto the first segment's rate (keeps each frame once: no fps dup/drop).
        filters += [
            f"setpts=N/({first.frame_rate})/TB",
            f"scale={first.width}:{first.height}",
            "setsar=1",
            "format=yuv420p",
        ]
        chain.append(",".join(filters))
        chain.append(f"[v{i}]")
        parts.append("".join(chain))
        labels.append(f"[v{i}]")
    parts.append(f"{''.join(labels)}concat=n={len(infos)}:v=1:a=0[out]")
    return ";".join(parts)


def _check_keep(paths: Sequence[Path], infos: Sequence[StreamInfo], keep: Sequence[Keep], overlap: int) -> None:
    for i, (p, info, (skip, count)) in enumerate(zip(paths, infos, keep, strict=True)):
        if skip < 0 or (count is not None and count < 1):
            raise InputRejected(f"keep[{i}]: ({skip}, {count}) is not a frame range (skip >= 0, count >= 1)")
        if count is None and skip and info.frames <= skip:
            what = f"the overlap ({overlap})" if overlap else f"the {skip} frames to skip"
            raise InputRejected(f"segment {p}: {info.frames} frames, not more than {what}", details={"path": str(p)})
        if count is not None and skip + count > info.frames:
            raise InputRejected(
                f"segment {p}: {info.frames} frames, fewer than the {skip + count} needed to keep {count} after "
                f"skipping {skip}",
                details={"path": str(p), "frames": info.frames, "skip": skip, "keep": count},
            )


async def join_segments(
    segments: Sequence[str | Path],
    output: str | Path,
    *,
    overlap: int = 0,
    keep: Sequence[Keep] | None = None,
    force_reencode: bool = False,
    verify: bool = True,
) -> JoinResult:
    """Join ``segments`` in order into ``output`` (mp4), dropping the first ``overlap`` frames of every
    segment after the first, or keeping each segment's ``keep`` range ``(skip, count)`` when given.
    Returns the mode used and the frame count (checked when ``verify``)."""
    paths = [Path(file_arg(s)) for s in segments]
    if not paths:
        raise InputRejected("segments: at least one segment is needed")
    if overlap < 0:
        raise InputRejected(f"overlap: must be >= 0, got {overlap}")
    if keep is None:
        keep = [(overlap if i else 0, None) for i in range(len(paths))]
    elif len(keep) != len(paths):
        raise InputRejected(f"keep: {len(keep)} frame ranges for {len(paths)} segments")
    for p in paths:
        if not p.is_file():
            raise InputRejected(f"segment {p}: file not found", details={"path": str(p)})
    started = time.perf_counter()
    limit = asyncio.Semaphore(4)

    async def probe_one(p: Path) -> StreamInfo:
        async with limit:
            return await probe(p)

    infos = list(await asyncio.gather(*(probe_one(p) for p in paths)))
    _check_keep(paths, infos, keep, overlap)
    kept = [count if count is not None else info.frames - skip for info, (skip, count) in zip(infos, keep, strict=True)]
    expected = sum(kept)
    trimmed = any(n < info.frames for n, info in zip(kept, infos, strict=True))
    out = Path(file_arg(output))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.stem}.joining{out.suffix or '.mp4'}")
    compatible = all(infos[0].compatible(i) for i in infos[1:])
    copy = not force_reencode and not trimmed and compatible
    with tempfile.TemporaryDirectory(prefix="cw_join_") as tmp:
        listing = Path(tmp) / "segments.txt"
        listing.write_text(_concat_list(paths), encoding="utf-8")
        demux = ["-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing)]
        if copy:
            args = [*demux, "-c", "copy", "-movflags", "+faststart", str(tmp_out)]
        elif compatible:
            # Same codec parameters: decode the files one after another, drop the overlap frames by index.
            rate = infos[0].frame_rate
            args = [*demux, "-vf", f"{_drop_frames(infos, keep)}setpts=N/({rate})/TB", "-map", "0:v:0",
                    "-r", rate, *ENCODE_ARGS, "-movflags", "+faststart", str(tmp_out)]  # fmt: skip
        else:
            args = ["-hide_banner", "-loglevel", "error", "-y"]
            for p in paths:
                args += ["-i", str(p)]
            graph_text = _filter_graph(infos, keep)
            args += ["-filter_complex", graph_text, "-map", "[out]", "-r", infos[0].frame_rate,
                     *ENCODE_ARGS, "-movflags", "+faststart", str(tmp_out)]  # fmt: skip
        try:
            await _run("ffmpeg", args, what=f"join {len(paths)} segments into {out}")
        except BaseException:
            tmp_out.unlink(missing_ok=True)
            raise
    frames = expected
    if verify:
        frames = await count_frames(tmp_out)
        if frames != expected:
            tmp_out.unlink(missing_ok=True)
            raise ExecutionFailed(
                f"join {out}: wrote {frames} frames, expected {expected}",
                details={
                    "frames": frames,
                    "expected_frames": expected,
                    "mode": "copy" if copy else "reencode",
                },
            )
    tmp_out.replace(out)
    seconds = time.perf_counter() - started
    log.info("segments_joined", output=str(out), segments=len(paths), mode="copy" if copy else "reencode",
             frames=frames, seconds=round(seconds, 3))  # fmt: skip
    return JoinResult(out, "copy" if copy else "reencode", frames, expected, seconds)
