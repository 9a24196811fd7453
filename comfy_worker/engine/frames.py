"""Video encoding off ComfyUI's path (VIDEO_ENCODE=worker, the default).

ComfyUI's ``SaveVideo`` encodes h264 on the prompt's thread, so the GPU waits for x264: 2.0 s of a 5B 1280x704x121
task on natural pictures, 7 s on random-weight noise (docs/benchmarks-gpu.md). The worker instead

1. swaps each ``SaveVideo`` of a task's graph for ``ComfyWorkerSaveVideo`` (:func:`swap_save_video`; same inputs,
   shipped in ``comfy_nodes/`` and loaded by the ComfyUI the worker launches), which writes the frames the encoder
   would have been given as raw rgb24 (the hand-over file, format below) in a fraction of the time;
2. after the prompt, while ComfyUI runs the next one, encodes that file with ffmpeg (:func:`encode_handover`) as
   SaveVideo would have: libx264 at its defaults, yuv420p, SaveVideo's frame rate (rounded to 1/1000), AAC audio cut
   to the frames' length, the prompt and workflow as ``use_metadata_tags`` metadata; the mp4 takes SaveVideo's name.

When the server does not list the node (an attached ComfyUI without it, ``--disable-all-custom-nodes``) or
ffmpeg is missing, the graph keeps SaveVideo: nothing fails for want of the faster path.

The hand-over file ``<prefix>_<counter>_.cwframes``: ``CWFRAMES1\\n``, an 8-byte little-endian header length, the
JSON header (``width``, ``height``, ``frames``, ``fps`` [num, den], ``pix_fmt`` ``rgb24``, ``output`` (the mp4's
name), ``audio`` (null or ``file``, ``sample_rate``, ``channels``, ``sample_fmt`` ``f32le``), ``metadata``
(key → JSON text)), then the frames. The audio, interleaved float32, is the ``.cwaudio`` file beside it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from comfy_worker.engine.outputs import OutputItem, safe_relpath
from comfy_worker.errors import EngineUnavailable
from comfy_worker.filehash import file_sha256
from comfy_worker.logs import get_logger
from comfy_worker.subproc import run_tool

log = get_logger(__name__)

NODE = "ComfyWorkerSaveVideo"
STOCK = "SaveVideo"
NODES_DIR = Path(__file__).resolve().parent / "comfy_nodes"  # the custom_nodes folder the supervisor registers
MAGIC = b"CWFRAMES1\n"
FRAMES_EXT = ".cwframes"
AUDIO_EXT = ".cwaudio"
SWAPPABLE = {"format": ("auto", "mp4"), "codec": ("auto", "h264")}  # what the node encodes as SaveVideo would


@functools.cache
def ffmpeg_path() -> str | None:
    return shutil.which("ffmpeg")


def nodes_paths_yaml(folder: Path | None = None) -> Path:
    """An extra-model-paths file registering NODES_DIR as a custom_nodes folder, for ComfyUI's
    ``--extra-model-paths-config``. Written at launch (the package may be read-only) with the absolute path: older
    ComfyUIs read a relative one against their working directory, not the file's."""
    text = "# written by comfy-worker: loads ComfyWorkerSaveVideo (VIDEO_ENCODE=worker)\ncomfy_worker:\n"
    text += f"  custom_nodes: {json.dumps(str(NODES_DIR))}\n"  # JSON quoting is YAML quoting
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(folder or tempfile.gettempdir()) / f"comfy-worker-nodes-{os.getuid()}-{digest}.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_text(text, encoding="utf-8")
        part.replace(path)
    return path


def swap_save_video(workflow: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Swap every SaveVideo (mp4 / h264 or auto) for the hand-over node, in place, when the server lists it and
    ffmpeg is here; the ids swapped (none: the graph is unchanged)."""
    if NODE not in object_info or ffmpeg_path() is None:
        return []
    swapped = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or node.get("class_type") != STOCK:
            continue
        inputs = node.get("inputs") or {}
        if any(inputs.get(k, "auto") not in ok for k, ok in SWAPPABLE.items()):
            continue  # a format or codec SaveVideo does not support either: let ComfyUI say so
        node["class_type"] = NODE
        swapped.append(str(node_id))
    return swapped


def is_handover_name(filename: str) -> bool:
    return filename.endswith((FRAMES_EXT, AUDIO_EXT))


@dataclass(frozen=True)
class Handover:
    path: Path
    offset: int  # where the frames start
    width: int
    height: int
    frames: int
    fps: tuple[int, int]
    output: str
    audio: dict[str, Any] | None
    metadata: dict[str, str]


def read_header(path: Path) -> Handover:
    """The hand-over file's header; EngineUnavailable when it is not one (a truncated or foreign file)."""
    try:
        with path.open("rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a hand-over file")
            (length,) = struct.unpack("<Q", fh.read(8))
            head = json.loads(fh.read(length))
        offset = len(MAGIC) + 8 + length
        w, h, n = int(head["width"]), int(head["height"]), int(head["frames"])
        num, den = (int(x) for x in head["fps"])
        if head.get("pix_fmt") != "rgb24" or min(w, h, n, num, den) <= 0:
            raise ValueError(f"unsupported header {head!r:.200}")
        size = path.stat().st_size
        if size != offset + w * h * 3 * n:
            raise ValueError(f"{size} bytes where the header promises {offset + w * h * 3 * n}")
        return Handover(
            path, offset, w, h, n, (num, den), str(head["output"]), head.get("audio"), dict(head.get("metadata") or {})
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise EngineUnavailable(f"ComfyUI's video hand-over file {path.name} cannot be read: {exc}") from exc


def ffmetadata(metadata: dict[str, str]) -> str:
    """ffmpeg's metadata file format (keys and values escaped: ``= ; # \\`` and newlines)."""

    def esc(s: str) -> str:
        for ch in ("\\", "=", ";", "#", "\n"):
            s = s.replace(ch, "\\" + ch)
        return s

    return ";FFMETADATA1\n" + "".join(f"{esc(k)}={esc(v)}\n" for k, v in metadata.items())


def ffmpeg_args(h: Handover, out: Path, audio: Path | None, meta: Path | None) -> list[str]:
    """The encode SaveVideo would have done (libx264 defaults, yuv420p, its frame rate; AAC; metadata tags)."""
    args = [
        ffmpeg_path() or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-skip_initial_bytes", str(h.offset), "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-video_size", f"{h.width}x{h.height}", "-framerate", f"{h.fps[0]}/{h.fps[1]}", "-i", str(h.path),
    ]  # fmt: skip
    maps = ["-map", "0:v"]
    with_audio = audio is not None and bool(h.audio)
    if with_audio:
        assert h.audio is not None
        args += ["-f", "f32le", "-ar", str(int(h.audio["sample_rate"])), "-ac", str(int(h.audio["channels"]))]
        args += ["-i", str(audio)]
        maps += ["-map", "1:a"]
    if meta is not None:
        args += ["-f", "ffmetadata", "-i", str(meta)]
        maps += ["-map_metadata", "2" if with_audio else "1"]
    args += [*maps, "-c:v", "libx264", "-pix_fmt", "yuv420p"]  # the file holds exactly the frames (read_header)
    if with_audio:
        args += ["-c:a", "aac"]
    return [*args, "-movflags", "use_metadata_tags", str(out)]


async def encode_handover(frames: OutputItem, audio: OutputItem | None, dest: Path | None = None) -> OutputItem:
    """The mp4 SaveVideo would have written, encoded from a hand-over file (and its audio). Downloaded hand-overs
    (under ``dest``, or any when ``dest`` is None) are removed and the mp4 written beside them; one read where
    ComfyUI wrote it stays for ComfyUI's cleanup, and the mp4 goes to ``dest/<type>/<subfolder>/``.
    EngineUnavailable (retried) when ffmpeg fails, with its last lines."""
    h = read_header(frames.path)
    if h.audio and audio is None:
        raise EngineUnavailable(f"ComfyUI's video hand-over {frames.filename} names audio it did not list")
    owned = dest is None or frames.path.is_relative_to(dest)
    folder = frames.path.parent if owned else dest / frames.type / safe_relpath(frames.subfolder, h.output).parent
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / Path(h.output).name
    meta = None
    if h.metadata:
        meta = out.with_suffix(".ffmeta")
        meta.write_text(ffmetadata(h.metadata), encoding="utf-8")
    args = ffmpeg_args(h, out, audio.path if audio else None, meta)
    try:
        done = await run_tool(args, capture_stdout=False)
    finally:
        sources = [frames.path, audio.path if audio else None] if owned else []
        for p in (meta, *sources):
            if p is not None:
                p.unlink(missing_ok=True)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        tail = done.stderr.decode(errors="replace").strip()[-400:]
        raise EngineUnavailable(f"encoding {h.output} with ffmpeg failed (exit {done.returncode}): {tail}")
    size = out.stat().st_size
    return replace(
        frames,
        kind="video",
        filename=out.name,
        path=out,
        bytes=size,
        sha256=await asyncio.to_thread(file_sha256, out),
        content_type="video/mp4",
    )


async def encode_handovers(items: Iterable[OutputItem], dest: Path | None = None) -> list[OutputItem]:
    """Outputs with every hand-over (frames + audio) replaced by its mp4, in the frames' place; the rest as is.
    ``dest``: where the outputs were downloaded (see :func:`encode_handover`)."""
    items = list(items)
    audio = {(i.node_id, i.type, i.subfolder, i.filename): i for i in items if i.filename.endswith(AUDIO_EXT)}
    result: list[OutputItem] = []
    for item in items:
        if item.filename.endswith(AUDIO_EXT):
            continue
        if not item.filename.endswith(FRAMES_EXT):
            result.append(item)
            continue
        stem = item.filename[: -len(FRAMES_EXT)]
        sound = audio.get((item.node_id, item.type, item.subfolder, stem + AUDIO_EXT))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        encoded = await encode_handover(item, sound, dest)
        log.info(
            "video_encoded",
            node_id=item.node_id,
            filename=encoded.filename,
            seconds=round(loop.time() - t0, 3),
            bytes=encoded.bytes,
        )
        result.append(encoded)
    return result
