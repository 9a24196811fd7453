"""Peak memory and throughput of a large upload to an object store (STORAGE_URL=s3://…) next to the Supabase path.

    python bench/bench_object_storage.py [--size-gb 2] [--out docs/benchmarks-object-storage.md]

In one run, with the servers in other processes (their memory is not counted):

1. a sparse file of ``--size-gb`` GiB (after checking free disk);
2. moto's S3 server (``moto_server``, tests/s3_server.py) and the Supabase Storage stand-in
   (tests/standins/storage.py, streaming bodies to disk) on 127.0.0.1;
3. in a fresh measuring process each: (a) ``ObjectStorage.upload`` with a journal: the resumable S3
   multipart path (8 MiB parts, 4 in flight, SigV4 over httpx); (b) ``ObjectStorage.upload`` through obstore's
   own streamed multipart (the path of GCS native and S3 without a static key); (c) with Azurite (npm, when
   .azurite/ has it) ``ObjectStorage.upload`` to ``az://`` with a journal: the resumable block blob path;
   (d) the baseline, ``SupabaseStorage.upload`` (TUS, 6 MiB chunks) to the stand-in;
4. peak RSS growth over each process's RSS just before the upload (psutil every 5 ms, and ru_maxrss),
   seconds and MiB/s; each stored object's size and SHA-256 are checked. Goal: <= 64 MiB growth.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_transfer_memory import PeakSampler  # noqa: E402

MiB = 1024 * 1024
KEY = "bench-service-role-key"
GOAL_MIB = 64
BUCKET = "renders"
LABELS = {
    "s3_resumable": "`ObjectStorage.upload` to moto S3: resumable multipart (8 MiB parts, 4 in flight)",
    "s3_obstore": "`ObjectStorage.upload` to moto S3: obstore streamed multipart (the GCS native path)",
    "az_blocks": "`ObjectStorage.upload` to Azurite: resumable block blob (8 MiB blocks, 4 in flight)",
    "supabase": "baseline: `SupabaseStorage.upload` (TUS, 6 MiB chunks) to the stand-in",
}


async def serve_supabase(workdir: Path) -> None:
    from tests.standins.storage import StorageStandin

    standin = StorageStandin(KEY, workdir / "supabase", buckets={"outputs": False})
    url = await standin.start()
    print(json.dumps({"supabase": url}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await standin.stop()


async def measure(kind: str, source: Path, urls: dict[str, str], env: dict[str, str]) -> dict[str, object]:
    from comfy_worker.storage import ObjectStorage, SupabaseStorage, UploadJournal

    if kind == "supabase":
        storage = SupabaseStorage(urls["supabase"], KEY, "outputs", public=False, signed_url_ttl_s=3600)
    elif kind == "az_blocks":
        storage = ObjectStorage(f"az://{BUCKET}/bench", signed_url_ttl_s=3600, env=env)
    else:
        storage = ObjectStorage(f"s3://{BUCKET}/bench", signed_url_ttl_s=3600, env=env)
        if kind == "s3_obstore":
            storage._s3 = None  # what a store without a static S3 key gets: obstore's own multipart
    await storage.check()
    sampler = PeakSampler().start()
    t0 = time.perf_counter()
    journal = UploadJournal({}, None) if kind in ("s3_resumable", "az_blocks") else None
    stored = await storage.upload(source, f"bench/{kind}/big.bin", journal=journal)
    seconds = time.perf_counter() - t0
    sampler.mark(kind)
    sampler.stop()
    await storage.aclose()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "kind": kind,
        "bytes": stored.bytes,
        "sha256": stored.sha256,
        "seconds": round(seconds, 2),
        "mib_s": round(stored.bytes / MiB / seconds, 1),
        "peak_growth_mib": round(sampler.phases[kind] / MiB, 1),
        "ru_maxrss_growth_mib": round(max(0, maxrss - sampler.base) / MiB, 1),
        "base_rss_mib": round(sampler.base / MiB, 1),
    }


def run_measurement(kind: str, source: Path, urls: dict[str, str], env: dict[str, str]) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--measure", kind, "--source", str(source), "--urls", json.dumps(urls)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"measurement {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def write_report(out: Path, size: int, results: list[dict[str, object]], command: str, printed: str) -> None:
    base = next(r for r in results if r["kind"] == "supabase")
    lines = [
        "# Benchmark: uploading a large output to an object store",
        "",
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), file of {size / 2**30:.1f} GiB.",
        "",
        f"Command: `{command}`",
        "",
        "Peak RSS growth of the measuring process over its RSS just before the upload (psutil sampled every 5 ms;",
        "moto, Azurite and the Supabase stand-in run in other processes, on 127.0.0.1). Goal: <= 64 MiB.",
        "",
        "| what | peak RSS growth (MiB) | ru_maxrss growth (MiB) | seconds | MiB/s | throughput vs baseline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = float(r["mib_s"]) / float(base["mib_s"])  # type: ignore[arg-type]
        lines.append(
            f"| {LABELS[str(r['kind'])]} | {r['peak_growth_mib']} | {r['ru_maxrss_growth_mib']} | {r['seconds']} "
            f"| {r['mib_s']} | {ratio:.2f}x |"
        )
    ok = all(float(r["peak_growth_mib"]) <= GOAL_MIB for r in results)  # type: ignore[arg-type]
    lines += [
        "",
        f"Result: {'PASS' if ok else 'FAIL'} (goal <= {GOAL_MIB} MiB). Each stored object's size and SHA-256 were "
        "checked against the source file. Throughput on moto is bounded by moto (a Python server on the same "
        "cores), not by the worker: the figures compare the paths, they do not predict S3's speed.",
        "",
        "Printed output:",
        "",
        "```",
        printed.rstrip(),
        "```",
        "",
    ]
    out.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks-object-storage.md"))
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--urls", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve_supabase(Path(args.serve)))
        return
    if args.measure:
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "AZURE_", "AZURITE_"))}
        print(json.dumps(asyncio.run(measure(args.measure, Path(args.source), json.loads(args.urls), env))))
        return

    from tests.azurite_server import AZURITE, Azurite
    from tests.s3_server import MotoServer

    size = int(args.size_gb * 2**30)
    workdir = Path(tempfile.mkdtemp(prefix="cw-bench-objstore-"))
    free = shutil.disk_usage(workdir).free
    need = 4 * size + 2**30  # moto's copies (parts, then the object), Azurite's and the stand-in's copy
    if free < need:
        shutil.rmtree(workdir)
        raise SystemExit(f"need {need / 2**30:.1f} GiB free in {workdir.parent}, have {free / 2**30:.1f} GiB")
    moto = MotoServer(workdir / "moto.log")
    azurite = None
    supabase = None
    printed: list[str] = []
    try:
        source = workdir / "source.bin"
        with open(source, "wb") as fh:  # sparse: instant, and takes no disk blocks
            fh.truncate(size)
        expected = sha256_of(source)
        moto.start()
        moto.create_bucket(BUCKET)
        supabase = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(workdir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, cwd=REPO,
        )
        assert supabase.stdout is not None
        urls = json.loads(supabase.stdout.readline())
        kinds = ["s3_resumable", "s3_obstore", "supabase"]
        if AZURITE.exists():  # installed by scripts/install.sh (npm)
            (workdir / "azurite").mkdir()
            azurite = Azurite(workdir / "azurite")
            azurite.start()
            kinds.insert(2, "az_blocks")
        results = []
        for kind in kinds:
            env = azurite.env() if kind == "az_blocks" and azurite is not None else moto.env()
            r = run_measurement(kind, source, urls, env)
            if r["bytes"] != size or r["sha256"] != expected:
                raise SystemExit(f"{kind}: the upload reported {r['bytes']} bytes / {r['sha256']}")
            if kind == "az_blocks" and azurite is not None:
                blob = azurite.container().get_blob_client(f"bench/bench/{kind}/big.bin")
                if blob.get_blob_properties().size != size or azurite.uncommitted(f"bench/bench/{kind}/big.bin"):
                    raise SystemExit(f"{kind}: Azurite does not hold the whole blob, or blocks are left uncommitted")
                blob.delete_blob()
            elif kind != "supabase":
                head = moto.client().head_object(Bucket=BUCKET, Key=f"bench/bench/{kind}/big.bin")
                if head["ContentLength"] != size:
                    raise SystemExit(f"{kind}: moto holds {head['ContentLength']} bytes, not {size}")
                moto.client().delete_object(Bucket=BUCKET, Key=f"bench/bench/{kind}/big.bin")
            results.append(r)
            line = json.dumps(r)
            print(line, flush=True)
            printed.append(line)
        stored = workdir / "supabase" / "outputs" / "bench" / "supabase" / "big.bin"
        if stored.stat().st_size != size:
            raise SystemExit("the stand-in's object does not match the source file")
        if moto.open_uploads(BUCKET):
            raise SystemExit(f"multipart uploads left open: {moto.open_uploads(BUCKET)}")
        command = ("python bench/bench_object_storage.py " + " ".join(sys.argv[1:])).strip()
        write_report(Path(args.out), size, results, command, "\n".join(printed))
        print(f"report written to {args.out}")
    finally:
        if supabase is not None:
            assert supabase.stdin is not None
            supabase.stdin.close()
            try:
                supabase.wait(timeout=30)
            except subprocess.TimeoutExpired:
                supabase.kill()
        moto.stop()
        if azurite is not None:
            azurite.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
