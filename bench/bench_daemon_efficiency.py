"""Does the daemon keep ComfyUI busy? ComfyUI alone vs. the same prompts as queued tasks, in one run.

    .venv/bin/python bench/bench_daemon_efficiency.py [--n 30] [--seconds 0.4]

1. ComfyUI alone: all N prompts queued at once over HTTP, so ComfyUI runs them back to back with no gap;
   time from the first POST /prompt to the last completion.
2. The daemon: a worker (PREFETCH=1, real Postgres queue, local storage) is idle; N tasks are inserted in one
   statement; time from the INSERT to the last task's `complete` row (so it includes claiming, input
   handling, queueing, waiting, downloading and storing outputs, and recording the result).

Each prompt is a small real graph (EmptyImage → a CPU-bound sleep-free blur → SaveImage) of roughly
0.3-0.5 s here, made unique per prompt so ComfyUI's cache never skips work. Prints both times and the ratio
alone/daemon (goal >= 0.95), and — the figure that isolates our overhead from CPU contention on a machine
where "the GPU" is the same two cores the daemon runs on — how often ComfyUI sat idle while the daemon had
work for it (sampling GET /queue every 20 ms between the first and the last busy sample; the sampler runs during
ComfyUI's solo run too, so both phases carry its load).
Needs the test ComfyUI (scripts/setup_test_comfyui.sh) and PostgreSQL.

``--webhooks hang`` (issue 22): after the run above (no webhook), the daemon phase runs ``--repeats`` more times
each way, alternating: with WEBHOOK_URL pointing at a receiver on 127.0.0.1 that holds every POST for 30 s before
answering (WEBHOOK_TIMEOUT_S=60, so every delivery slot stays taken for the whole run), and without; prints
every time and mean(hanging) / mean(no webhook).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import drop_database, fresh_database  # noqa: E402

from comfy_worker.cli import build_registry  # noqa: E402
from comfy_worker.config import load_settings  # noqa: E402
from comfy_worker.daemon import Daemon  # noqa: E402
from comfy_worker.engine import ComfyClient  # noqa: E402
from comfy_worker.logs import configure_logging  # noqa: E402
from comfy_worker.storage import LocalStorage  # noqa: E402
from comfy_worker.store.postgres import PostgresStore  # noqa: E402
from tests.comfy_server import free_port, remove_workdir, start_test_comfyui, stop_test_comfyui  # noqa: E402

WORKLOAD = "cpu"


def graph(i: int, size: int, radius: int) -> dict:
    """``cpu``: a CPU-bound blur (ComfyUI computes on the same two cores the daemon uses). ``gpu``: the node
    waits instead of computing (tests/comfy_nodes CWSlow), as ComfyUI's process does while a GPU works, so
    the CPU is free for the daemon as it would be on a GPU box. Both end in a real SaveImage output."""
    if WORKLOAD == "gpu":
        return {
            "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                         "color": i}},
            "2": {"class_type": "CWSlow", "inputs": {"images": ["1", 0], "seconds": 0.4, "steps": 8}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"eff_{i}"}},
        }
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": i}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": radius, "sigma": 3.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"eff_{i}"}},
    }


async def comfy_alone(url: str, graphs: list[dict]) -> float:
    async with ComfyClient(url) as client:
        await client.connect()
        t0 = time.perf_counter()
        ids = [await client.queue_prompt(g) for g in graphs]
        for pid in ids:
            await client.wait(pid, deadline_s=600, stall_s=120)
        return time.perf_counter() - t0


async def through_daemon(
    url: str, dsn: str, graphs: list[dict], storage_dir: Path, extra_env: dict[str, str] | None = None
) -> float:
    settings = load_settings({
        "DATABASE_URL": dsn, "COMFY_URL": url, "LOCAL_STORAGE_DIR": str(storage_dir), "PREFETCH": "1",
        "LOG_LEVEL": "warning", "LOG_FORMAT": "json", **(extra_env or {}),
    }, dotenv=None)
    daemon = Daemon(settings, store=PostgresStore(dsn), storage=LocalStorage(storage_dir),
                    registry=build_registry(settings, worker_id="bench-worker"), worker_id="bench-worker")
    await daemon.start()
    runner = asyncio.create_task(daemon.run())
    conn = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(1.0)  # the worker is idle, listening
        t0 = time.perf_counter()
        await conn.execute(
            "insert into tasks (task_type, params) select 'comfy', jsonb_build_object('workflow', g::jsonb) "
            "from unnest($1::text[]) g", [json.dumps(g) for g in graphs])
        while True:
            left = await conn.fetchval("select count(*) from tasks where status <> 'complete'")
            failed = await conn.fetchval("select count(*) from tasks where status in ('failed', 'cancelled')")
            if failed:
                raise RuntimeError(await conn.fetch("select error from tasks where status = 'failed'"))
            if left == 0:
                elapsed = time.perf_counter() - t0
                break
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
        daemon.request_stop("bench_end")
        await runner
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--radius", type=int, default=20)
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--workload", choices=["cpu", "gpu", "both"], default="both")
    ap.add_argument("--webhooks", choices=["none", "hang"], default="none",
                    help="hang: also run the daemon phase with a webhook receiver that hangs 30 s (issue 22)")
    ap.add_argument("--repeats", type=int, default=2, help="with --webhooks hang: runs of each kind, alternating")
    a = ap.parse_args()
    global WORKLOAD
    for workload in (["cpu", "gpu"] if a.workload == "both" else [a.workload]):
        WORKLOAD = workload
        print(f"--- workload: {workload}")
        await one_run(a)


async def one_run(a: argparse.Namespace) -> None:
    configure_logging("warning", "json")
    proc, url = start_test_comfyui(free_port())
    db, dsn = await fresh_database(a.admin_dsn, "bench_eff")
    try:
        async with ComfyClient(url) as c:  # warm-up: imports, first-run allocations
            await c.wait(await c.queue_prompt(graph(999_999, a.size, a.radius)), deadline_s=300, stall_s=120)
        one = await comfy_alone(url, [graph(1_000_000 + i, a.size, a.radius) for i in range(3)]) / 3
        samples: list[tuple[float, int, int]] = []

        async def sample_queue(stop: asyncio.Event, into: list[tuple[float, int, int]]) -> None:
            async with httpx.AsyncClient() as h:
                while not stop.is_set():
                    q = (await h.get(url + "/queue")).json()
                    into.append((time.perf_counter(), len(q["queue_running"]), len(q["queue_pending"])))
                    await asyncio.sleep(0.02)

        # the sampler runs in both phases, so both pay the same for ComfyUI answering it
        stop_alone = asyncio.Event()
        sampler = asyncio.create_task(sample_queue(stop_alone, []))
        alone = await comfy_alone(url, [graph(i, a.size, a.radius) for i in range(a.n)])
        stop_alone.set()
        await sampler
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_queue(stop, samples))
        with tempfile.TemporaryDirectory() as tmp:
            daemon = await through_daemon(url, dsn, [graph(10_000 + i, a.size, a.radius) for i in range(a.n)],
                                          Path(tmp))
        stop.set()
        await sampler
        busy = [t for t, running, _ in samples if running]
        window = [x for x in samples if busy and busy[0] <= x[0] <= busy[-1]]
        idle = sum(1 for _, running, _ in window if not running)
        queued_ahead = sum(1 for _, _, pending in window if pending)
        middle = "CWSlow 0.4 s" if WORKLOAD == "gpu" else f"ImageBlur r={a.radius}"
        print(f"prompt: EmptyImage {a.size}x{a.size} -> {middle} -> SaveImage, ~{one:.2f} s each")
        print(f"{'N':>4} {'ComfyUI alone s':>16} {'daemon s':>10} {'alone/daemon':>13}")
        print(f"{a.n:>4} {alone:>16.2f} {daemon:>10.2f} {alone / daemon:>13.3f}")
        print(f"ComfyUI idle while tasks were waiting: {idle}/{len(window)} samples "
              f"({100 * idle / max(len(window), 1):.1f}%); next prompt already queued in "
              f"{100 * queued_ahead / max(len(window), 1):.0f}% of samples")
        if a.webhooks == "hang":
            await with_hanging_receiver(a, url, dsn, daemon)
    finally:
        await drop_database(a.admin_dsn, db)
        stop_test_comfyui(proc)
        remove_workdir(proc)


async def hanging_receiver(hold_s: float) -> tuple[web.AppRunner, str, list[int]]:
    """A webhook receiver on 127.0.0.1 that answers every POST only after ``hold_s`` seconds."""
    started: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        started.append(1)
        await asyncio.sleep(hold_s)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook", started


async def with_hanging_receiver(a: argparse.Namespace, url: str, dsn: str, first_plain: float) -> None:
    runner, hook_url, started = await hanging_receiver(30.0)
    secret = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdef").decode()
    hook_env = {"WEBHOOK_URL": hook_url, "WEBHOOK_SECRET": secret, "WEBHOOK_TIMEOUT_S": "60"}
    plain, hang = [first_plain], []
    events = 0
    try:
        conn = await asyncpg.connect(dsn)
        try:
            # none (the run above), then hang, none, hang, none, …: alternating, so a drift of the machine's load
            # falls on both
            for i, env in enumerate([hook_env, None] * a.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    t = await through_daemon(
                        url, dsn, [graph(20_000 + 1000 * i + j, a.size, a.radius) for j in range(a.n)], Path(tmp), env)
                (hang if env else plain).append(t)
                events += await conn.fetchval("select count(*) from webhook_events")
                await conn.execute("delete from webhook_events; delete from webhook_config")  # the fleet: no webhooks
        finally:
            await conn.close()
    finally:
        await runner.cleanup()
    mean_plain, mean_hang = sum(plain) / len(plain), sum(hang) / len(hang)
    print(f"webhook receiver hanging 30 s ({len(started)} POSTs held open, {events} events in the outbox):")
    print(f"  daemon s, no webhook:        {'  '.join(f'{t:.2f}' for t in plain)}  (mean {mean_plain:.2f})")
    print(f"  daemon s, receiver hanging:  {'  '.join(f'{t:.2f}' for t in hang)}  (mean {mean_hang:.2f})")
    print(f"  hanging / no webhook = {mean_hang / mean_plain:.3f}; spread of the no-webhook runs: "
          f"{(max(plain) - min(plain)) / mean_plain:.1%}")


if __name__ == "__main__":
    asyncio.run(main())
