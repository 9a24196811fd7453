"""Peak memory while moving a large file through comfy-worker's input and output paths.

    python bench/bench_transfer_memory.py [--size-gb 2] [--no-naive] [--out docs/benchmarks-transfer.md]

What it does, in one run:

1. makes a sparse file of ``--size-gb`` GiB in a temporary directory (after checking free disk);
2. starts, in a separate process (so its memory is not counted), a plain aiohttp file server for that file
   and the Supabase Storage stand-in (tests/standins/storage.py, which streams bodies to disk);
3. in a fresh measuring process each: (a) ``comfy_worker.inputs.fetch_url`` downloads the file, then
   ``SupabaseStorage.upload`` sends the downloaded copy to the stand-in (resumable/TUS, 6 MiB chunks);
   (b) baseline: a plain ``httpx`` streamed copy to disk; (c) baseline: the naive ``httpx.get().content``
   read into memory (skipped with ``--no-naive``);
4. prints peak RSS growth over each process's RSS just before the transfer (psutil, sampled every 5 ms in a
   thread, cross-checked with ``ru_maxrss``), checks the stored object's size and SHA-256, writes the
   figures to ``--out`` and deletes the temporary files. Goal: fetch + upload peak growth <= 64 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
KEY = "bench-service-role-key"
GOAL_MIB = 64


# --- server process -----------------------------------------------------------------------------------------


async def serve(workdir: Path, source_file: Path) -> None:
    from aiohttp import web

    from tests.standins.storage import StorageStandin

    app = web.Application()

    async def big(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(source_file)

    app.router.add_get("/big.bin", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    standin = StorageStandin(KEY, workdir / "storage", buckets={"outputs": False})
    storage_url = await standin.start()
    print(json.dumps({"source": f"http://127.0.0.1:{port}/big.bin", "storage": storage_url}), flush=True)
    # run until the parent closes our stdin
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await standin.stop()
    await runner.cleanup()


# --- measuring process --------------------------------------------------------------------------------------


class PeakSampler:
    """Samples this process's RSS in a thread; ``mark(name)`` closes a phase and records its peak."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.base = self._proc.memory_info().rss
        self._peak = self.base
        self.phases: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            with self._lock:
                self._peak = max(self._peak, rss)
            self._stop.wait(self._interval)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        rss = self._proc.memory_info().rss
        with self._lock:
            self.phases[phase] = max(self._peak, rss) - self.base
            self._peak = rss  # next phase starts from the current RSS

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def measure(kind: str, source: str, storage_url: str, workdir: Path) -> dict[str, object]:
    import httpx

    from comfy_worker.inputs import fetch_url
    from comfy_worker.storage.supabase import SupabaseStorage

    out_dir = workdir / f"measure-{kind}"
    out_dir.mkdir(parents=True, exist_ok=True)
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0))
    storage = SupabaseStorage(storage_url, KEY, "outputs", public=False, signed_url_ttl_s=3600, http=client)
    await client.get(storage_url + "/storage/v1/bucket/outputs", headers={"apikey": KEY})  # warm up imports
    result: dict[str, object] = {"kind": kind}
    sampler = PeakSampler().start()
    t0 = time.perf_counter()
    if kind == "pipeline":
        local = await fetch_url(
            source, out_dir, max_bytes=1 << 40, timeout_s=120, allow_private=True, client=client
        )
        t1 = time.perf_counter()
        sampler.mark("fetch_url")
        stored = await storage.upload(local, "bench/task/big.bin")
        t2 = time.perf_counter()
        sampler.mark("supabase_upload")
        result.update(
            fetch_s=round(t1 - t0, 2), upload_s=round(t2 - t1, 2), bytes=stored.bytes, sha256=stored.sha256
        )
    elif kind == "httpx_copy":
        async with client.stream("GET", source) as resp:
            with open(out_dir / "copy.bin", "wb") as fh:
                async for block in resp.aiter_bytes(MiB):
                    fh.write(block)
        sampler.mark("httpx_copy")
    elif kind == "naive":
        resp = await client.get(source)
        data = resp.content
        (out_dir / "naive.bin").write_bytes(data)
        sampler.mark("naive")
        result["bytes"] = len(data)
        del data, resp
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    result["seconds"] = round(time.perf_counter() - t0, 2)
    sampler.stop()
    await client.aclose()
    # ru_maxrss (KiB on Linux) is a process-lifetime high-water mark: its growth over the pre-transfer RSS
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["phases_mib"] = {k: round(v / MiB, 1) for k, v in sampler.phases.items()}
    result["peak_growth_mib"] = round(max(sampler.phases.values()) / MiB, 1)
    result["ru_maxrss_growth_mib"] = round(max(0, maxrss - sampler.base) / MiB, 1)
    result["base_rss_mib"] = round(sampler.base / MiB, 1)
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


# --- orchestration ------------------------------------------------------------------------------------------


def run_measurement(kind: str, urls: dict[str, str], workdir: Path) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        kind,
        "--source",
        urls["source"],
        "--storage",
        urls["storage"],
        "--workdir",
        str(workdir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def write_report(out: Path, size: int, results: list[dict[str, object]], command: str) -> None:
    pipe = results[0]
    phases = pipe["phases_mib"]
    assert isinstance(phases, dict)
    ok = float(pipe["peak_growth_mib"]) <= GOAL_MIB  # type: ignore[arg-type]
    lines = [
        "# Benchmark: memory while transferring a large file",
        "",
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), file of {size / 2**30:.1f} GiB.",
        "",
        f"Command: `{command}`",
        "",
        "Peak RSS growth of the measuring process over its RSS just before the transfer (psutil sampled",
        "every 5 ms; the servers run in another process). Goal for fetch + upload: <= 64 MiB.",
        "",
        "| what | peak RSS growth (MiB) | ru_maxrss growth (MiB) | seconds |",
        "|---|---:|---:|---:|",
        f"| `fetch_url` (inputs.py, streamed to disk) | {phases['fetch_url']} | | {pipe['fetch_s']} |",
        f"| `SupabaseStorage.upload` (TUS, 6 MiB chunks) to the stand-in | {phases['supabase_upload']} | "
        f"| {pipe['upload_s']} |",
        f"| **fetch + upload, whole run** | **{pipe['peak_growth_mib']}** | {pipe['ru_maxrss_growth_mib']} "
        f"| {pipe['seconds']} |",
    ]
    for r in results[1:]:
        label = {
            "httpx_copy": "baseline: plain `httpx` stream copy to disk",
            "naive": "baseline: naive `httpx.get().content` (whole file in memory)",
        }[str(r["kind"])]
        lines.append(f"| {label} | {r['peak_growth_mib']} | {r['ru_maxrss_growth_mib']} | {r['seconds']} |")
    lines += [
        "",
        f"Result: {'PASS' if ok else 'FAIL'} (goal <= {GOAL_MIB} MiB). The stored object's size and SHA-256 "
        "were checked against the source file.",
        "",
    ]
    out.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--no-naive", action="store_true", help="skip the read-into-memory baseline")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks-transfer.md"))
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        workdir = Path(args.serve)
        asyncio.run(serve(workdir, workdir / "source.bin"))
        return
    if args.measure:
        print(json.dumps(asyncio.run(measure(args.measure, args.source, args.storage, Path(args.workdir)))))
        return

    size = int(args.size_gb * 2**30)
    workdir = Path(tempfile.mkdtemp(prefix="cw-bench-transfer-"))
    need = 2 * size + 2**30  # the fetched copy + the stand-in's copy (+ the baselines' copies, one at a time)
    free = shutil.disk_usage(workdir).free
    if free < need:
        shutil.rmtree(workdir)
        raise SystemExit(f"need {need / 2**30:.1f} GiB free in {workdir.parent}, have {free / 2**30:.1f} GiB")
    server = None
    try:
        source = workdir / "source.bin"
        with open(source, "wb") as fh:  # sparse: instant, and takes no disk blocks
            fh.truncate(size)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert server.stdout is not None
        urls = json.loads(server.stdout.readline())
        kinds = ["pipeline", "httpx_copy"] + ([] if args.no_naive else ["naive"])
        results = []
        for kind in kinds:
            r = run_measurement(kind, urls, workdir)
            print(json.dumps(r), flush=True)
            results.append(r)
        stored = workdir / "storage" / "outputs" / "bench" / "task" / "big.bin"
        expected = sha256_of(source)
        pipe = results[0]
        if stored.stat().st_size != size or pipe["sha256"] != expected or sha256_of(stored) != expected:
            raise SystemExit("the stored object does not match the source file")
        command = "python bench/bench_transfer_memory.py " + " ".join(sys.argv[1:])
        write_report(Path(args.out), size, results, command.strip())
        print(
            f"fetch + upload peak RSS growth: {pipe['peak_growth_mib']} MiB (goal <= {GOAL_MIB}); "
            f"report written to {args.out}"
        )
    finally:
        if server is not None:
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
