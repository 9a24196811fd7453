"""How cheaply can ComfyUI hand a video's frames to the worker? (issue 24, part 3: the design of an encode off
ComfyUI's path.) For 121 frames of ffmpeg ``testsrc2`` at 1280x704 (the 5B ti2v default), on this CPU, in one run:

* ``savevideo_h264``: what stock ``SaveVideo`` does today (PyAV h264 defaults, rgb24 -> yuv420p, mp4): the baseline;
* ``png_level1``: what stock ``SaveImageWebsocket`` (ComfyUI's custom_nodes/websocket_image_save.py) does per frame
  (PIL PNG, compress_level 1), serially in ComfyUI's server loop;
* ``apng_level0``: what stock ``SaveAnimatedPNG`` does with ``compress_level`` 0 (one animated PNG, zlib storing
  without compressing: the cheapest stock way to get every frame out losslessly);
* ``raw_copy``: the frames' bytes copied once (what a raw hand-over, e.g. shared memory, would cost).

Prints seconds per video and each ratio against the baseline. Needs PyAV, Pillow and numpy (the test ComfyUI's
venv has them: ``.test-env/venv-0.3.64/bin/python bench/bench_frame_handover.py``) and ffmpeg on PATH.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def natural_frames(width: int, height: int, count: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=24",
         "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(count, height, width, 3)


def savevideo_h264(frames: np.ndarray) -> int:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("h264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return len(buf.getvalue())


def png_level1(frames: np.ndarray) -> int:
    size = 0
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG", compress_level=1)
        size += len(buf.getvalue())
    return size


def apng_level0(frames: np.ndarray) -> int:
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", compress_level=0, save_all=True, duration=42, append_images=images[1:])
    return len(buf.getvalue())


def raw_copy(frames: np.ndarray) -> int:
    return len(frames.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1280x704")
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = natural_frames(width, height, args.frames)
    ways: list[tuple[str, Callable[[np.ndarray], int]]] = [
        ("savevideo_h264", savevideo_h264), ("png_level1", png_level1), ("apng_level0", apng_level0),
        ("raw_copy", raw_copy)]  # fmt: skip
    best: dict[str, float] = {}
    for i in range(args.repeat):
        for name, fn in ways:
            t0 = time.perf_counter()
            size = fn(frames)
            seconds = time.perf_counter() - t0
            best[name] = min(best.get(name, seconds), seconds)
            print(f"round {i + 1}: {name:15s} {seconds:6.3f} s  {size / 2**20:8.1f} MiB", flush=True)
    base = best["savevideo_h264"]
    print(f"best of {args.repeat}, {args.frames} frames {args.size}, ratio to savevideo_h264:")
    for name, seconds in best.items():
        print(f"  {name:15s} {seconds:6.3f} s  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
