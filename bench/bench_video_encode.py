"""What VIDEO_ENCODE=worker takes off ComfyUI's path, on a real ComfyUI 0.3.64 (CPU) with the worker's node loaded.

Natural content (ffmpeg ``testsrc2``; ``--audio`` adds a stereo tone) decoded by LoadVideo → GetVideoComponents →
CreateVideo, as a decoded Wan video reaches the save node, then in the same prompt stock ``SaveVideo`` (the baseline,
encoding on ComfyUI's thread) and ``ComfyWorkerSaveVideo`` (the frames handed over); the worker then encodes the
hand-over with ffmpeg (engine/frames.py) off ComfyUI's path. Per size, ``--repeat`` prompts (the decode is cached
after the first, so only the save nodes run): seconds of each save node from ComfyUI's websocket events, the
ratio hand-over ÷ SaveVideo (what stays on the GPU's path), the worker's encode, the two mp4s' sizes and PSNR.

    .venv/bin/python bench/bench_video_encode.py [--sizes 1280x704x121,832x480x81] [--repeat 2] [--audio]

Needs the test ComfyUI 0.3.64 (scripts/install.sh) and ffmpeg. On this 2-core machine every figure is a ratio
against the baseline in the same run; absolute times are the GPU machine's (docs/benchmarks-gpu.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_worker.engine import ComfyClient
from comfy_worker.engine.frames import NODE, encode_handovers, nodes_paths_yaml
from comfy_worker.engine.node_timing import NodeClock
from tests.comfy_server import free_port, remove_workdir, stop_test_comfyui
from tests.comfy_server_0364 import start_comfyui_0364


def clip(dest: Path, w: int, h: int, n: int, fps: int, audio: bool) -> Path:
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}"]  # fmt: skip
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-ac", "2", "-c:a", "aac", "-shortest"]
    subprocess.run([*args, "-frames:v", str(n), "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(dest)],
                   check=True)  # fmt: skip
    return dest


def graph(name: str, fps: int, audio: bool, tag: str) -> dict:
    g: dict = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": name}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": float(fps)}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": f"bench/stock_{tag}",
                                                    "format": "auto", "codec": "auto"}},
        "5": {"class_type": NODE, "inputs": {"video": ["3", 0], "filename_prefix": f"bench/worker_{tag}",
                                             "format": "auto", "codec": "auto"}},
    }  # fmt: skip
    if audio:
        g["3"]["inputs"]["audio"] = ["2", 1]
    return g


def psnr(a: Path, b: Path) -> float:
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(a), "-i", str(b), "-lavfi", "psnr",
                          "-f", "null", "-"], capture_output=True, text=True, check=True).stderr  # fmt: skip
    line = next(x for x in out.splitlines() if "average:" in x)
    return float(line.split("average:")[1].split()[0])


async def run(sizes: list[tuple[int, int, int]], repeat: int, audio: bool, fps: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="cw-bench-encode-"))
    proc, base_url = start_comfyui_0364(free_port(), extra_args=["--extra-model-paths-config", str(nodes_paths_yaml())])
    try:
        async with ComfyClient(base_url) as client:
            for w, h, n in sizes:
                name = await client.upload_file(clip(work / f"clip_{w}x{h}x{n}.mp4", w, h, n, fps, audio),
                                                subfolder="bench", overwrite=True)  # fmt: skip
                rows = []
                for i in range(repeat):
                    print(f"\r{w}x{h}x{n}: prompt {i + 1}/{repeat} …", end="", flush=True)
                    clock = NodeClock()
                    wf = graph(name, fps, audio, f"{w}x{h}_{i}")
                    hist = await client.wait(await client.queue_prompt(wf), on_event=clock.feed,
                                             deadline_s=1800, stall_s=1800)  # fmt: skip
                    nodes = {r["node"]: r["seconds"] for r in clock.report(wf)}
                    items = await client.download_outputs(hist, work / f"out_{i}")
                    t0 = time.perf_counter()
                    encoded = sorted(await encode_handovers(items), key=lambda it: it.node_id)
                    rows.append((nodes["4"], nodes["5"], time.perf_counter() - t0, encoded))
                stock = statistics.median(r[0] for r in rows)
                hand = statistics.median(r[1] for r in rows)
                enc = statistics.median(r[2] for r in rows)
                last = rows[-1][3]
                quality = psnr(last[0].path, last[1].path)
                print(f"\r{w}x{h}x{n} fps {fps}{' +audio' if audio else ''} ({repeat} prompts, medians): "
                      f"SaveVideo {stock:.3f} s | ComfyWorkerSaveVideo {hand:.3f} s | hand-over/SaveVideo "
                      f"{hand / stock:.3f} | worker encode (off ComfyUI's path) {enc:.3f} s | mp4 bytes "
                      f"{last[0].bytes} / {last[1].bytes} | PSNR worker vs SaveVideo {quality:.2f} dB")  # fmt: skip
    finally:
        stop_test_comfyui(proc)
        remove_workdir(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1280x704x121,832x480x81")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--audio", action="store_true")
    a = ap.parse_args()
    sizes = [tuple(int(x) for x in s.split("x")) for s in a.sizes.split(",")]
    asyncio.run(run(sizes, a.repeat, a.audio, a.fps))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
