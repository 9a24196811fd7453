"""`comfy-worker models sync` on a large file: peak memory, throughput, and what a resume costs.

    python bench/bench_models_sync.py [--size-mb 1024]

In one run, against a real aiohttp file server on 127.0.0.1 (tests/standins/model_files.py, in this process):

1. ``comfy-worker models sync`` downloads the file into a fresh models directory (subprocess; sha256 verified);
2. baselines on the same file: ``curl -o`` and a plain ``httpx`` streamed copy (no hashing, no lock);
3. resume: the server cuts the connection half-way, ``sync --retries 0`` stops there, a second ``sync`` finishes;
   the bytes the second run fetched are read from the server's log.

Peak RSS is each command's ``ru_maxrss`` (a fresh wrapper process per command, so nothing else is counted).
Ratios within the run are what to compare; this machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
WRAP = (
    "import json, resource, subprocess, sys, time; t = time.monotonic(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
    "print(json.dumps({'rc': rc, 's': time.monotonic() - t, "
    "'rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
)
HTTPX_COPY = """
import httpx, sys
with httpx.stream("GET", sys.argv[1]) as r, open(sys.argv[2], "wb") as f:
    for b in r.iter_raw():
        f.write(b)
"""


def measured(*cmd: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    from tests.standins.model_files import ModelFileServer

    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    need = args.size_mb * MiB * 5
    if shutil.disk_usage(work).free < need:
        sys.exit(f"needs {need / 1e9:.1f} GB free in {work}")
    try:
        with ModelFileServer(work / "served") as srv:
            src = srv.root / "big.safetensors"
            with src.open("wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(MiB))
            h = hashlib.sha256()
            with src.open("rb") as f:
                while b := f.read(8 * MiB):
                    h.update(b)
            url = f"{srv.base_url}/files/big.safetensors"
            manifest = work / "m.yaml"
            entry = {"name": "big.safetensors", "folder": "diffusion_models", "url": url, "sha256": h.hexdigest()}
            manifest.write_text(json.dumps({"models": [entry]}))
            cw = [sys.executable, "-m", "comfy_worker", "models", "sync", "--manifest", str(manifest)]

            rows = []
            rows.append(("comfy-worker models sync", measured(*cw, "--models-dir", str(work / "m1"))))
            assert (work / "m1" / "diffusion_models" / "big.safetensors").stat().st_size == args.size_mb * MiB
            if shutil.which("curl"):
                rows.append(("baseline: curl -o", measured("curl", "-sS", "-o", str(work / "curl.bin"), url)))
            rows.append(
                ("baseline: httpx stream copy", measured(sys.executable, "-c", HTTPX_COPY, url, str(work / "hx.bin")))
            )

            half = args.size_mb * MiB // 2
            srv.cut("big.safetensors", after=half)
            first = measured(*cw, "--models-dir", str(work / "m2"), "--retries", "0")
            second = measured(*cw, "--models-dir", str(work / "m2"), "--retries", "0")
            resumed = srv.gets("/files/big.safetensors")[-1]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    size = args.size_mb * MiB
    print(f"file: {args.size_mb} MiB, sha256 verified by sync; load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<30} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13}")
    for name, r in rows:
        assert r["rc"] == 0, (name, r)
        print(f"{name:<30} {r['s']:8.2f} {size / MiB / r['s']:8.1f} {r['rss_mib']:13.1f}")
    print(
        f"resume: first run stopped at the cut (rc {first['rc']}), second run rc {second['rc']} fetched "
        f"{resumed.sent / MiB:.0f} MiB with {resumed.range!r} (HTTP {resumed.status}) in {second['s']:.2f} s "
        f"(of which hashing the kept half is part)"
    )


if __name__ == "__main__":
    main()
