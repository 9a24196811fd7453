"""Benchmark: what hashing once and resuming transfers save, each against its baseline in the same run.

1. Storing an output that was hashed while it downloaded from ComfyUI: ``LocalStorage.upload`` hashing it
   again (before: ``sha256=None``) vs using the digest it is given (now), for a file of ``--mib`` MiB.
   Figures: wall time and this process's CPU time (user + sys), best of ``--repeat``.
2. An input download cut at ``--cut`` of the file: bytes the server sent in all, resuming with Range (now)
   vs starting over (what every retry did before; measured with the same code against a server that sends
   no validator, so no resume is possible).
3. A TUS upload (to the Supabase Storage stand-in) cut by a worker restart at ``--cut``: bytes PATCHed in all,
   resumed from the journalled URL (now) vs a fresh upload (before).

    .venv/bin/python bench/bench_transfers.py                  # 1 GiB file, cut at 60 %
    .venv/bin/python bench/bench_transfers.py --mib 256 --cut 0.3

Prints a markdown table; ratios are the figures to compare (absolute times depend on the machine's disk).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfy_worker.errors import StorageUnavailable  # noqa: E402
from comfy_worker.inputs import fetch_url  # noqa: E402
from comfy_worker.storage import LocalStorage, SupabaseStorage, UploadJournal  # noqa: E402
from comfy_worker.storage.supabase import TUS_CHUNK  # noqa: E402
from tests.http_cut_server import CuttingServer  # noqa: E402
from tests.standins.storage import StorageStandin  # noqa: E402

MiB = 1024 * 1024


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()


async def store_output(src: Path, root: Path, sha: str, repeat: int) -> dict[str, tuple[float, float]]:
    storage = LocalStorage(root)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for label, given in (("hash again (before)", None), ("digest passed through (now)", sha)):
            c0, t0 = cpu(), time.perf_counter()
            obj = await storage.upload(src, f"comfy/bench/{label[:4]}.bin", sha256=given)
            wall, used = time.perf_counter() - t0, cpu() - c0
            assert obj.sha256 == sha
            if label not in best or wall < best[label][0]:
                best[label] = (wall, used)
    return best


async def download_cut(tmp: Path, payload_mib: int, cut: float) -> dict[str, int]:
    payload = os.urandom(payload_mib * MiB)
    out = {}
    for label, validators in (("start over (before)", False), ("resume with Range (now)", True)):
        server = CuttingServer(cuts=[int(len(payload) * cut)], validators=validators, payload=payload)
        url = await server.start()
        try:
            got = await fetch_url(url, tmp / label[:5], max_bytes=1 << 40, timeout_s=60, allow_private=True,
                                  retry_wait_s=0.01)  # fmt: skip
            assert got.read_bytes() == payload
        finally:
            await server.stop()
        out[label] = sum(s.sent for s in server.seen)
    return out


async def upload_cut(src: Path, tmp: Path, sha: str, cut: float) -> dict[str, int]:
    size = src.stat().st_size
    chunks_before_cut = max(1, int(size * cut) // TUS_CHUNK)
    out = {}
    for label, keep_journal in (("fresh upload (before)", False), ("resume from journal (now)", True)):
        standin = StorageStandin("k", tmp / f"server-{label[:5]}")
        base = await standin.start()
        journal = UploadJournal()
        try:
            standin.fail("PATCH", nth=chunks_before_cut + 1, keep_bytes=TUS_CHUNK // 2, cut=True)
            dying = SupabaseStorage(base, "k", "outputs", public=False, signed_url_ttl_s=60, retry_attempts=1)
            try:
                await dying.upload(src, "comfy/bench/out.bin", sha256=sha, journal=journal)
            except StorageUnavailable:
                pass
            finally:
                await dying.aclose()
            fresh = SupabaseStorage(base, "k", "outputs", public=False, signed_url_ttl_s=60)
            try:
                obj = await fresh.upload(src, "comfy/bench/out.bin", sha256=sha,
                                         journal=journal if keep_journal else UploadJournal())  # fmt: skip
            finally:
                await fresh.aclose()
            assert obj.bytes == size
        finally:
            await standin.stop()
        out[label] = sum(r.body_bytes for r in standin.calls("PATCH"))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="size of the output file (MiB)")
    ap.add_argument("--download-mib", type=int, default=64, help="size of the input download (MiB)")
    ap.add_argument("--cut", type=float, default=0.6, help="where transfers are cut (fraction of the file)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cw_bench_transfers_") as d:
        tmp = Path(d)
        src = tmp / "output.bin"
        print(f"writing a {args.mib} MiB file…", file=sys.stderr, flush=True)
        sha = write_file(src, args.mib * MiB)
        print("storing it (hash again vs digest passed)…", file=sys.stderr, flush=True)
        stored = await store_output(src, tmp / "storage", sha, args.repeat)
        print("downloading with a cut…", file=sys.stderr, flush=True)
        down = await download_cut(tmp, args.download_mib, args.cut)
        print("uploading (TUS) with a restart…", file=sys.stderr, flush=True)
        up = await upload_cut(src, tmp, sha, args.cut)

    print(f"\nPython {platform.python_version()}, {os.cpu_count()} CPUs; cut at {args.cut:.0%}\n")
    print(f"| storing a {args.mib} MiB output | wall s | CPU s |")
    print("|---|---|---|")
    for label, (wall, used) in stored.items():
        print(f"| {label} | {wall:.2f} | {used:.2f} |")
    (w0, c0), (w1, c1) = stored.values()
    print(f"| ratio (before / now) | {w0 / w1:.1f}x | {c0 / max(c1, 1e-6):.1f}x |\n")
    print("| cut transfer | bytes sent in all | x the file |")
    print("|---|---|---|")
    for what, size, results in (("input download", args.download_mib * MiB, down), ("TUS upload", args.mib * MiB, up)):
        for label, sent in results.items():
            print(f"| {what}: {label} | {sent:,} | {sent / size:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
