"""Does a batch scale over the fleet, and what does the fleet mode cost? The same 24-run batch three ways, in one run.

    .venv/bin/python bench/bench_explore.py [--runs 24] [--seconds 1.0] [--rounds 1]

1. local: ``comfy-worker batch --server URL`` (LocalRunner): one ComfyUI, one run at a time.
2. fleet, one daemon: ``--fleet`` (FleetRunner) on a fresh PostgreSQL queue with one worker process
   (``python -m comfy_worker``, PREFETCH=1, local storage) and its own ComfyUI.
3. fleet, two daemons: the same with two worker processes, each with its own ComfyUI (two "GPU boxes").

Each run's prompt is GPU-like: EmptyImage (the varied colour) -> CWSlow (waits ``--seconds`` while the CPU is
free, as ComfyUI does while a GPU works; never cached) -> SaveImage. The time is the batch's wall time, from
planning to the last run recorded (outputs downloaded, thumbnail, metadata.csv, contact sheet), with the workers
already up and idle. Goals: two daemons <= 0.55x one daemon; fleet with one daemon <= 1.05x local.
Needs the test ComfyUI (scripts/setup_test_comfyui.sh) and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import drop_database, fresh_database  # noqa: E402

from comfy_worker.explore.batch import run_batch  # noqa: E402
from comfy_worker.explore.batch_config import load_config  # noqa: E402
from comfy_worker.explore.runners import FleetRunner, LocalRunner  # noqa: E402
from comfy_worker.logs import configure_logging  # noqa: E402
from comfy_worker.storage import LocalStorage  # noqa: E402
from comfy_worker.store.postgres import PostgresStore  # noqa: E402
from tests.comfy_server import free_port, remove_workdir, start_test_comfyui, stop_test_comfyui  # noqa: E402


def write_config(tmp: Path, runs: int, seconds: float) -> Path:
    wf = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0}},
        "2": {"class_type": "CWSlow", "inputs": {"images": ["1", 0], "seconds": seconds, "steps": 10}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench_explore"}},
    }
    (tmp / "wf.json").write_text(json.dumps(wf))
    config = {
        "workflow_file": "wf.json", "sampling_strategy": "lhs", "num_samples": runs, "seed": 1,
        "parameters": {"color": {"path": "nodes.1.inputs.color", "type": "continuous", "min": 0, "max": 16777215}},
        "output": {"directory": str(tmp / "output"), "run_name_pattern": "{run_id:04d}_c{color}"},
        "resume": {"enabled": False},
    }
    (tmp / "batch.yaml").write_text(yaml.safe_dump(config))
    return tmp / "batch.yaml"


async def start_workers(dsn: str, urls: list[str], storage: Path) -> list[asyncio.subprocess.Process]:
    procs = []
    for i, url in enumerate(urls):
        env = {**os.environ, "DATABASE_URL": dsn, "COMFY_URL": url, "LOCAL_STORAGE_DIR": str(storage),
               "PREFETCH": "1", "LOG_LEVEL": "warning", "LOG_FORMAT": "json", "PYTHONPATH": str(REPO)}
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "comfy_worker", "--worker-id", f"bench-explore-{i}", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(600):  # until every worker registered and went idle
            idle = await conn.fetchval("select count(*) from workers where status = 'idle'")
            if idle == len(urls):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("workers did not start")
    finally:
        await conn.close()
    await asyncio.sleep(1.0)
    return procs


async def stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        await asyncio.wait_for(p.wait(), 60)


async def timed_batch(config: Path, runner: object) -> float:
    cfg = load_config(config)
    t0 = time.perf_counter()
    result = await run_batch(cfg, runner, out=io.StringIO(), fresh=True)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    if result.complete != result.total:
        raise RuntimeError(f"{result.failed} runs failed")
    return elapsed


async def fleet(admin_dsn: str, config: Path, urls: list[str], storage: Path) -> float:
    name, dsn = await fresh_database(admin_dsn, "bench_explore")
    procs = await start_workers(dsn, urls, storage)
    store = PostgresStore(dsn)
    await store.connect()
    try:
        return await timed_batch(config, FleetRunner(store, LocalStorage(storage)))
    finally:
        await store.close()
        await stop_workers(procs)
        await drop_database(admin_dsn, name)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    a = ap.parse_args()
    configure_logging("warning", "json")
    comfy = [start_test_comfyui(free_port()) for _ in range(2)]
    urls = [url for _proc, url in comfy]
    try:
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            config = write_config(tmp, a.runs, a.seconds)
            await timed_batch(config, LocalRunner(urls[1]))  # warm-up: imports, first-run allocations
            rows = []
            for _ in range(a.rounds):
                local = await timed_batch(config, LocalRunner(urls[0]))
                one = await fleet(a.admin_dsn, config, urls[:1], tmp / "storage")
                two = await fleet(a.admin_dsn, config, urls, tmp / "storage")
                rows.append((local, one, two))
    finally:
        for proc, _url in comfy:
            stop_test_comfyui(proc)
            remove_workdir(proc)
    print(f"batch: {a.runs} runs (lhs over EmptyImage colour), each EmptyImage -> CWSlow {a.seconds:.1f} s -> "
          "SaveImage; wall time from plan to last run recorded")
    print(f"{'local s':>9} {'fleet x1 s':>11} {'fleet x2 s':>11} {'x2 / x1':>8} {'x1 / local':>11}")
    for local, one, two in rows:
        print(f"{local:>9.2f} {one:>11.2f} {two:>11.2f} {two / one:>8.3f} {one / local:>11.3f}")
    print(f"ideal: {a.runs * a.seconds:.1f} s for one GPU, {a.runs * a.seconds / 2:.1f} s for two; "
          "goals: x2 / x1 <= 0.55, x1 / local <= 1.05")


if __name__ == "__main__":
    asyncio.run(main())
