"""What the claim preference saves on a mixed queue, and what one engine switch costs the daemon, in one run.

    .venv/bin/python bench/bench_engine_switch.py [--pairs 6] [--load-s 1.0]

One daemon (real Postgres queue, local storage) with both engines: the test ComfyUI (CPU, attached) and Wan2GP —
the real child on the fake checkout (tests/standins/wan2gp) whose model load takes ``--load-s`` seconds and holds
real memory until freed. The same queue, N ``comfy`` tasks (CWSlow 0.3 s) and N ``t2v`` tasks (4 steps)
interleaved, runs twice:

1. baseline: ENGINE_SWITCH_MAX_WAIT_S=0, claims in plain queue order: every task is a switch (2N-1 of them), and
   every Wan2GP task loads its model again (the switch before it freed it);
2. preference (ENGINE_SWITCH_MAX_WAIT_S=300, the default): claims prefer the engine the GPU will hold.

Prints wall time (first insert to last completion) of each, the ratio, the number of switches, and the daemon's
own hand-over time per switch (``engine_switch`` seconds: the free call and the memory wait; on this CPU machine
ComfyUI's /free and /system_stats, Wan2GP's free request). Needs the test ComfyUI and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from structlog.testing import capture_logs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfy_worker.cli import build_registry  # noqa: E402
from comfy_worker.config import load_settings  # noqa: E402
from comfy_worker.daemon import Daemon  # noqa: E402
from comfy_worker.models import NewTask  # noqa: E402
from comfy_worker.storage import LocalStorage  # noqa: E402
from comfy_worker.store.postgres import PostgresStore  # noqa: E402
from tests.comfy_server import free_port, remove_workdir, start_test_comfyui, stop_test_comfyui  # noqa: E402
from tests.integration.daemon.workflows import slow  # noqa: E402

STANDIN = REPO / "tests" / "standins" / "wan2gp"


async def one_run(url: str, dsn: str, pairs: int, max_wait: str, work: Path) -> tuple[float, list[float]]:
    settings = load_settings({
        "DATABASE_URL": dsn, "COMFY_URL": url, "WAN2GP_PATH": str(STANDIN), "WAN2GP_ARGS": f"--loras {work}/loras",
        "LOCAL_STORAGE_DIR": str(work / "storage"), "WORK_DIR": str(work / "work"), "PREFETCH": "1",
        "ENGINE_SWITCH_MAX_WAIT_S": max_wait, "LOG_LEVEL": "warning", "POLL_INTERVAL": "0.2",
    })  # fmt: skip
    store = PostgresStore(dsn)
    await store.connect()
    daemon = Daemon(settings, store=PostgresStore(dsn), storage=LocalStorage(work / "storage"),
                    registry=build_registry(settings, worker_id=f"bench-{max_wait}"), worker_id=f"bench-{max_wait}",
                    gpu_probe=None)
    with capture_logs() as logs:
        await daemon.start()
        runner = asyncio.create_task(daemon.run())
        t0 = time.perf_counter()
        ids = []
        for i in range(pairs):
            ids.append((await store.enqueue(NewTask("comfy", {"workflow": slow(0.3)}))).task_id)
            t2v = {"prompt": f"pair {i}", "resolution": "32x32", "video_length": 5, "num_inference_steps": 4}
            ids.append((await store.enqueue(NewTask("t2v", t2v))).task_id)
        while True:
            tasks = [await store.get_task(t) for t in ids]
            if any(t.status.terminal and t.status.value != "complete" for t in tasks):
                raise RuntimeError([(t.task_id, t.error) for t in tasks if t.error])
            if all(t.status.value == "complete" for t in tasks):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        daemon.request_stop("bench_end")
        await runner
    await store.close()
    switches = [float(e["seconds"]) for e in logs if e.get("event") == "engine_switch"]
    return elapsed, switches


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--load-s", type=float, default=1.0, help="the stand-in's model load time")
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    a = ap.parse_args()
    os.environ.update({"WGP_STANDIN_LOAD_S": str(a.load_s), "WGP_STANDIN_MODEL_MB": "256",
                       "WGP_STANDIN_STEP_S": "0.05"})
    proc, url = start_test_comfyui(free_port())
    admin = await asyncpg.connect(a.admin_dsn)
    try:
        results = {}
        for label, max_wait in (("plain order (baseline)", "0"), ("preference", "300")):
            db = f"bench_sw_{uuid.uuid4().hex[:8]}"
            await admin.execute(f'create database "{db}"')
            dsn = a.admin_dsn.rsplit("/", 1)[0] + "/" + db
            s = PostgresStore(dsn, listen=False)
            await s.connect()
            await s.migrate()
            await s.close()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    results[label] = await one_run(url, dsn, a.pairs, max_wait, Path(tmp))
            finally:
                await admin.execute(f'drop database if exists "{db}" with (force)')
        print(f"{a.pairs} comfy (CWSlow 0.3 s) + {a.pairs} t2v (stand-in: load {a.load_s} s, 4 x 0.05 s steps), "
              "interleaved")
        print(f"{'claims':<24} {'wall s':>8} {'switches':>9} {'hand-over s (median, max)':>27}")
        for label, (elapsed, switches) in results.items():
            med = statistics.median(switches) if switches else 0.0
            print(f"{label:<24} {elapsed:>8.2f} {len(switches):>9} {med:>18.3f}, {max(switches, default=0):.3f}")
        base, pref = results["plain order (baseline)"][0], results["preference"][0]
        print(f"preference / baseline wall time: {pref / base:.3f}")
    finally:
        await admin.close()
        stop_test_comfyui(proc)
        remove_workdir(proc)


if __name__ == "__main__":
    asyncio.run(main())
