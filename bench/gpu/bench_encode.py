"""SaveVideo's encode on natural-looking pictures, on this machine's CPU (issue 24, part 3).

ComfyUI 0.3.64's ``SaveVideo`` (``VideoFromComponents.save_to``) turns each float frame into bytes
(``(frame * 255).clamp(0, 255).byte()``), makes an ``rgb24`` PyAV frame, reformats it to ``yuv420p`` and encodes it
with PyAV's ``h264`` (libx264 defaults: preset medium, crf 23, its own thread count) into an mp4. This does exactly
that, for frames from ffmpeg's ``testsrc2`` (moving, natural-looking test pattern) at each task type's default
size, frame count and fps (``comfy_worker.builders.params.DEFAULTS``), and prints seconds per video.

    python bench/gpu/bench_encode.py [--repeat 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from comfy_worker.builders.params import DEFAULTS


def frames(width: int, height: int, count: int, fps: float, source: str = "testsrc2") -> torch.Tensor:
    """(count, H, W, 3) float32 in 0..1, as ComfyUI's IMAGE tensors are, from ffmpeg's lavfi ``source`` (the
    ffmpeg command when there is one, else PyAV's own libavfilter)."""
    if not shutil.which("ffmpeg"):
        got = []
        with av.open(f"{source}=size={width}x{height}:rate={fps}", format="lavfi") as src:
            for frame in src.decode(video=0):
                got.append(frame.to_ndarray(format="rgb24"))
                if len(got) == count:
                    break
        return torch.from_numpy(np.stack(got)).float() / 255.0
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate={fps}",
         "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    arr = np.frombuffer(raw, np.uint8).reshape(count, height, width, 3)
    return torch.from_numpy(arr.copy()).float() / 255.0


def save_like_comfyui(images: torch.Tensor, fps: float, path: Path) -> None:
    """ComfyUI 0.3.64 VideoFromComponents.save_to, video part (no audio)."""
    with av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as output:
        stream = output.add_stream("h264", rate=Fraction(round(fps * 1000), 1000))
        stream.width = images.shape[2]
        stream.height = images.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in images:
            img = (frame * 255).clamp(0, 255).byte().cpu().numpy()
            vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(vf):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--source", default="testsrc2")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_type, d in DEFAULTS.items():
            w, h, n, fps = d["width"], d["height"], d["num_frames"], d["fps"]
            imgs = frames(w, h, n, fps, args.source)
            times = []
            for i in range(args.repeat):
                t0 = time.perf_counter()
                save_like_comfyui(imgs, fps, Path(tmp) / f"{task_type}_{i}.mp4")
                times.append(time.perf_counter() - t0)
            size = (Path(tmp) / f"{task_type}_0.mp4").stat().st_size
            row = {"task_type": task_type, "size": f"{w}x{h}", "frames": n, "fps": fps, "source": args.source,
                   "encode_s": [round(t, 3) for t in times], "mp4_bytes": size}  # fmt: skip
            rows.append(row)
            print("bench: encode", json.dumps(row), flush=True)
    print("bench: cpu", json.dumps({"cores": os.cpu_count(), "av": av.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
