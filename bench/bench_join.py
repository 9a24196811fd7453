"""Benchmark: joining N chain segments with our ffmpeg concat vs the progressive combine.

Progressive (what the documented ComfyUI combine workflow does): combine k decodes the video combined so
far plus segment k and re-encodes all of it, so the frames encoded grow as N². Ours: the concat demuxer with
stream copy (no overlap), or one re-encode of the whole video (overlap trimmed): linear in N.
The progressive side here only joins (no upscale / interpolation), so the comparison favours it.

    .venv/bin/python bench/bench_join.py            # N = 5, 10, 20; 101-frame 256x256 segments
    .venv/bin/python bench/bench_join.py --sizes 5 10 --frames 49

Prints a markdown table with wall time and the CPU time (user + sys) of the ffmpeg/ffprobe processes; on a
shared machine CPU time is the fairer figure (it does not count waiting for a core). Every output's frame
count is verified with ffprobe (decoded frames).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from comfy_worker.handlers.prompt_runner.join import ENCODE_ARGS, count_frames, join_segments

KINDS = ("copy", "reencode", "progressive")


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """Wall seconds, and CPU seconds of the child processes that ended inside the block."""
    out: dict[str, float] = {}
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    yield out
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["wall"] = time.perf_counter() - t0
    out["cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def make_segments(directory: Path, count: int, frames: int, size: int) -> list[Path]:
    paths = []
    for i in range(count):
        p = directory / f"segment_{i + 1:03d}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate=30",
             "-ss", str(i * 4), "-frames:v", str(frames), *ENCODE_ARGS, str(p)],
            check=True,
        )  # fmt: skip
        paths.append(p)
    return paths


def progressive(segments: list[Path], directory: Path) -> Path:
    """combined_1 = segment 1 re-encoded; combined_k = re-encode(combined_{k-1} ++ segment k)."""
    previous: Path | None = None
    for k, seg in enumerate(segments, start=1):
        out = directory / f"combined_{k:03d}.mp4"
        if previous is None:
            args = ["-i", str(seg), *ENCODE_ARGS]
        else:
            args = ["-i", str(previous), "-i", str(seg), "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]",
                    "-map", "[v]", *ENCODE_ARGS]  # fmt: skip
        subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(out)], check=True)
        previous = out
    assert previous is not None
    return previous


async def bench(sizes: list[int], frames: int, size: int, overlap: int) -> list[dict[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_join_") as tmp:
        root = Path(tmp)
        all_segments = make_segments(root, max(sizes), frames, size)
        for n in sizes:
            segs = all_segments[:n]
            work = root / f"n{n}"
            work.mkdir()
            with timed() as t_copy:
                ours = await join_segments(segs, work / "ours_copy.mp4", verify=False)
            with timed() as t_reencode:
                ours_re = await join_segments(segs, work / "ours_reencode.mp4", overlap=overlap, verify=False)
            with timed() as t_prog:
                prog = progressive(segs, work)
            got = {
                "copy": await count_frames(ours.output, decode=True),
                "reencode": await count_frames(ours_re.output, decode=True),
                "progressive": await count_frames(prog, decode=True),
            }
            want = {"copy": n * frames, "reencode": n * frames - overlap * (n - 1), "progressive": n * frames}
            if got != want:
                raise SystemExit(f"frame count mismatch at N={n}: got {got}, expected {want}")
            row: dict[str, float] = {"n": n, "frames": got["copy"], "frames_re": got["reencode"]}
            for key, t in zip(KINDS, (t_copy, t_reencode, t_prog), strict=True):
                row[key], row[f"{key}_cpu"] = t["wall"], t["cpu"]
            rows.append(row)
            done = ", ".join(f"{k} {row[k]:.2f}s wall / {row[k + '_cpu']:.2f}s cpu" for k in KINDS)
            print(f"N={n}: {done}", file=sys.stderr)
    return rows


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> bool:
    first_line = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{os.cpu_count()} CPUs ({platform.machine()}), load average {load}; {first_line}; "
        f"{args.frames}-frame {args.size}x{args.size} segments; encoder: {' '.join(ENCODE_ARGS)}; "
        f"overlap in the re-encode run: {args.overlap}\n"
    )
    print(
        "| N | ours: concat copy | ours: one re-encode (overlap trimmed) | progressive "
        "| progressive / copy | progressive / re-encode | frames (copy / re-encode) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.2f} s ({r[k + '_cpu']:.2f} s cpu)" for k in KINDS]
        ratios = [
            f"{r['progressive'] / r[k]:.1f}x ({r['progressive_cpu'] / r[k + '_cpu']:.1f}x cpu)"
            for k in ("copy", "reencode")
        ]
        frames = f"{r['frames']:.0f} / {r['frames_re']:.0f}"
        print(f"| {r['n']:.0f} | {' | '.join(cells)} | {' | '.join(ratios)} | {frames} |")
    first, last = rows[0], rows[-1]
    scale = last["n"] / first["n"]
    print()
    for key in KINDS:
        wall, cpu = last[key] / first[key], last[key + "_cpu"] / first[key + "_cpu"]
        print(f"- {key}: N x{scale:.0f} → wall x{wall:.1f}, cpu x{cpu:.1f}")
    ok = all(last["progressive_cpu"] / last[k + "_cpu"] >= 5 for k in ("copy", "reencode"))
    print(f"\n>= 5x less CPU than progressive at N={last['n']:.0f}: {'yes' if ok else 'NO'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--frames", type=int, default=101)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=4, help="overlap trimmed in our re-encode run")
    args = ap.parse_args()
    rows = asyncio.run(bench(args.sizes, args.frames, args.size, args.overlap))
    return 0 if report(rows, args) else 1


if __name__ == "__main__":
    sys.exit(main())
