"""How long a dead worker's task waits before another worker claims it, per store, with the default settings.

    .venv/bin/python bench/bench_recovery.py [--trials 20] [--scenarios postgres,postgres-stopped,...]

Each trial is real processes on the real CPU test ComfyUI: a victim ``python -m comfy_worker`` claims a task
(a CWSlow prompt long enough never to finish), a rescuer daemon starts beside it, and at a random moment
1-11 s later (two heartbeat periods, so every phase of the victim's heartbeat is sampled) the victim is
failed. The figure is from that moment to the task's next claim (its ``started_at`` on the second attempt).

Scenarios (the goal in brackets):

* ``postgres``          ``kill -9`` of the victim, PostgreSQL queue [p99 <= 5 s]
* ``postgres-stopped``  host vanished, as SIGSTOP: the process freezes, its kernel keeps its connections
                        open (so its presence lock stays) [<= 45 s]
* ``postgres-dropped``  host vanished for real: every packet of the victim's database connections is dropped
                        (iptables, needs root; its connections go through a port of their own) [<= 45 s]
* ``supabase``          ``kill -9``, Supabase queue through tests/standins (PostgREST + Storage) [<= 45 s]
* ``sqlite``            ``kill -9``, embedded SQLite queue [<= 45 s]

Trials of a scenario run in parallel lanes, each lane with its own queue (database, SQLite file or stand-in)
and its own victim and rescuer, so lease-bound scenarios finish in minutes. Prints a line per trial and a
table of p50 / p99 / max per scenario. Needs PostgreSQL and the test ComfyUI (scripts/setup_test_comfyui.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import drop_database, fresh_database, pct  # noqa: E402

from comfy_worker.models import NewTask, TaskStatus  # noqa: E402
from comfy_worker.store.base import TaskStore  # noqa: E402
from comfy_worker.store.postgres import PostgresStore  # noqa: E402
from comfy_worker.store.sqlite import SqliteStore  # noqa: E402
from tests.comfy_server import free_port, remove_workdir, start_test_comfyui, stop_test_comfyui  # noqa: E402
from tests.integration.conftest import SUPABASE_TEST_KEY  # noqa: E402
from tests.standins.postgrest import PostgrestStandin  # noqa: E402
from tests.standins.storage import StorageStandin  # noqa: E402

SCENARIOS = {  # name: (store, how the victim fails, goal p99 s)
    "postgres": ("postgres", "kill", 5.0),
    "postgres-stopped": ("postgres", "stop", 45.0),
    "postgres-dropped": ("postgres", "drop", 45.0),
    "supabase": ("supabase", "kill", 45.0),
    "sqlite": ("sqlite", "kill", 45.0),
}
LANES = {"postgres": 3, "postgres-stopped": 5, "postgres-dropped": 5, "supabase": 5, "sqlite": 5}
TRIAL_TIMEOUT_S = 120


def workflow(tag: str) -> dict[str, Any]:
    return {  # never finishes within a trial: the task is running whenever the victim fails
        "1": {"class_type": "CWSlow", "inputs": {"seconds": 900, "steps": 2}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"rec_{tag}"}},
    }


def iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)


def can_drop_packets() -> bool:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        return False
    return subprocess.run(["iptables", "-w", "-S", "OUTPUT"], capture_output=True).returncode == 0


class SupabaseFront:
    """One origin for the two stand-ins, as Supabase serves /rest/v1 and /storage/v1 on one URL."""

    def __init__(self, rest: str, storage: str) -> None:
        self.rest, self.storage = rest, storage
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> str:
        self._session = ClientSession()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _forward(self, request: web.Request) -> web.Response:
        base = self.storage if request.path.startswith("/storage/") else self.rest
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, base + request.path_qs, headers=headers,
                                         data=await request.read()) as resp:
            body = await resp.read()
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")}
            return web.Response(status=resp.status, body=body, headers=keep)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@dataclass
class Lane:
    """One queue with its own victims and rescuers; runs its trials one after another."""

    scenario: str
    index: int
    admin_dsn: str
    comfy_url: str
    root: Path
    store: TaskStore | None = None
    env: dict[str, str] = field(default_factory=dict)
    victim_env: dict[str, str] = field(default_factory=dict)
    dbname: str = ""
    drop_port: int = 0
    cleanups: list[Any] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return SCENARIOS[self.scenario][0]

    @property
    def mode(self) -> str:
        return SCENARIOS[self.scenario][1]

    async def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LEASE_", "HEARTBEAT_", "STALE_", "POLL_", "DATABASE_", "SUPABASE_"))}
        self.env.update({"COMFY_URL": self.comfy_url, "LOG_FORMAT": "json", "PYTHONPATH": str(REPO),
                         "LOCAL_STORAGE_DIR": str(self.root / "outputs"), "WORK_DIR": str(self.root / "work")})
        if self.kind in ("postgres", "supabase"):
            self.dbname, dsn = await fresh_database(self.admin_dsn, "bench_rec")
            store = PostgresStore(dsn, listen=False)
            await store.connect()
            self.store = store
            if self.kind == "postgres":
                self.env["DATABASE_URL"] = dsn
            else:
                rest = PostgrestStandin(dsn, SUPABASE_TEST_KEY)
                storage = StorageStandin(SUPABASE_TEST_KEY, self.root / "storage")
                front = SupabaseFront(await rest.start(), await storage.start())
                self.cleanups += [front.stop, storage.stop, rest.stop]
                self.env.update({"SUPABASE_URL": await front.start(), "SUPABASE_SERVICE_ROLE_KEY": SUPABASE_TEST_KEY})
        else:
            path = self.root / "queue.db"
            store = SqliteStore(path, poll_interval=0.05)
            await store.connect()
            await store.migrate()
            self.store = store
            self.env["DATABASE_URL"] = f"sqlite:///{path}"
        self.victim_env = dict(self.env)
        if self.mode == "drop":  # the victim's connections go through a port of their own (redirected to 5432)
            self.drop_port = free_port()
            host, port = self.admin_dsn.split("@", 1)[1].split("/", 1)[0].split(":")
            iptables("-t", "nat", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "-d", host, "--dport", str(self.drop_port),
                     "-j", "REDIRECT", "--to-ports", port)
            self.cleanups.append(lambda: self._unredirect(host, port))
            self.victim_env["DATABASE_URL"] = self.env["DATABASE_URL"].replace(f":{port}/", f":{self.drop_port}/")

    async def _unredirect(self, host: str, port: str) -> None:
        iptables("-t", "nat", "-D", "OUTPUT", "-o", "lo", "-p", "tcp", "-d", host, "--dport", str(self.drop_port),
                 "-j", "REDIRECT", "--to-ports", port)

    def _drop_rule(self, action: str) -> None:
        iptables(action, "OUTPUT", "-o", "lo", "-p", "tcp", "-m", "conntrack", "--ctorigdstport", str(self.drop_port),
                 "-j", "DROP")

    async def teardown(self) -> None:
        if self.store is not None:
            await self.store.close()
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):
                await cleanup()
        if self.dbname:
            await drop_database(self.admin_dsn, self.dbname)

    async def _daemon(self, worker_id: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        log = (self.root / f"{worker_id}.log").open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "comfy_worker", "--worker-id", worker_id, env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True)
        finally:
            log.close()

    async def _until(self, what: str, check: Any, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise RuntimeError(f"lane {self.scenario}/{self.index}: {what} within {timeout} s (logs in {self.root})")

    async def _registered(self, worker_id: str) -> bool:
        assert self.store is not None
        snap = await self.store.fleet_snapshot()
        return any(w["id"] == worker_id and w["status"] in ("idle", "busy") for w in snap["workers"])

    async def trial(self, n: int, rng: random.Random) -> tuple[float, str]:
        assert self.store is not None
        store = self.store
        tag = f"{self.index}-{n}-{uuid.uuid4().hex[:6]}"
        victim = await self._daemon(f"victim-{tag}", self.victim_env)
        rescuer: asyncio.subprocess.Process | None = None
        dropped = False
        try:
            task = await store.enqueue(NewTask("comfy", {"workflow": workflow(tag)}, max_attempts=5))

            async def held_by_victim() -> bool:
                t = await store.get_task(task.task_id)
                return t.status is TaskStatus.RUNNING and t.worker_id == f"victim-{tag}"

            await self._until("the victim did not claim its task", held_by_victim)
            rescuer = await self._daemon(f"rescuer-{tag}", self.env)
            await self._until("the rescuer did not register", lambda: self._registered(f"rescuer-{tag}"))
            await asyncio.sleep(rng.uniform(1.0, 11.0))
            failed_at = time.time()
            if self.mode == "kill":
                os.kill(victim.pid, signal.SIGKILL)
            elif self.mode == "stop":
                os.kill(victim.pid, signal.SIGSTOP)
            else:
                self._drop_rule("-I")
                dropped = True

            async def reclaimed() -> tuple[float, str] | None:
                t = await store.get_task(task.task_id)
                if t.attempts >= 2 and t.started_at is not None:  # why it was requeued: the claim keeps the error
                    return t.started_at.timestamp() - failed_at, (t.error_details or {}).get("reason", "?")
                return None

            took, why = await self._until("the task was not claimed again", reclaimed, TRIAL_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await store.cancel(task.task_id, "benchmark trial over")
            return float(took), str(why)
        finally:
            if dropped:
                self._drop_rule("-D")
            for proc in (victim, rescuer):
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def run_scenario(name: str, trials: int, lanes: int, admin_dsn: str, comfy_url: str, root: Path,
                       seed: int) -> tuple[list[float], Counter[str]]:
    lanes = max(1, min(lanes, trials))
    lane_objs = [Lane(name, i, admin_dsn, comfy_url, root / f"{name}-{i}") for i in range(lanes)]
    results: list[float] = []
    reasons: Counter[str] = Counter()
    started = time.monotonic()
    try:
        await asyncio.gather(*(lane.setup() for lane in lane_objs))

        async def run_lane(lane: Lane) -> None:
            rng = random.Random(seed * 100 + lane.index)
            for n in range(lane.index, trials, lanes):
                took, why = await lane.trial(n, rng)
                results.append(took)
                reasons[why] += 1
                print(f"  {name:<17} trial {len(results):>2}/{trials}: {took:6.2f} s  {why:<14}"
                      f"(lane {lane.index}, {time.monotonic() - started:4.0f} s elapsed)", flush=True)

        await asyncio.gather(*(run_lane(lane) for lane in lane_objs))
    finally:
        for lane in lane_objs:
            await lane.teardown()
    return results, reasons


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--lanes", type=int, default=0, help="parallel lanes per scenario (default: per scenario)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    names = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if "postgres-dropped" in names and not can_drop_packets():
        print("postgres-dropped: skipped (dropping packets needs root and iptables)", flush=True)
        names.remove("postgres-dropped")
    root = Path(tempfile.mkdtemp(prefix="cw-bench-recovery-"))
    comfy, comfy_url = start_test_comfyui(free_port(), workdir=root / "comfyui")
    print(f"defaults: LEASE_SECONDS 30, HEARTBEAT_INTERVAL 5, STALE_CHECK_INTERVAL 2, POLL_INTERVAL 2; "
          f"{a.trials} trials per scenario; ComfyUI at {comfy_url}", flush=True)
    table: list[tuple[str, tuple[list[float], Counter[str]]]] = []
    try:
        for name in names:
            lanes = a.lanes or LANES[name]
            print(f"{name}: {a.trials} trials in {min(lanes, a.trials)} lanes", flush=True)
            table.append((name, await run_scenario(name, a.trials, lanes, a.dsn, comfy_url, root, a.seed)))
    finally:
        stop_test_comfyui(comfy)
        remove_workdir(comfy)
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'scenario':<18} {'fails by':<10} {'n':>3} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'goal p99':>9}  met"
          "  requeued by")
    for name, (xs, reasons) in table:
        _store, mode, goal = SCENARIOS[name]
        how = {"kill": "kill -9", "stop": "SIGSTOP", "drop": "net drop"}[mode]
        p99 = pct(xs, 0.99)
        print(f"{name:<18} {how:<10} {len(xs):>3} {pct(xs, 0.5):>7.2f} {p99:>7.2f} {max(xs):>7.2f} "
              f"{'<= ' + format(goal, 'g') + ' s':>9}  {'yes' if p99 <= goal else 'NO ':<3}  "
              + ", ".join(f"{why} {k}" for why, k in reasons.most_common()))
    print("(seconds from the failure to the task's next claim; p99 of 20 trials is their maximum. worker_gone: its")
    print(" presence lock was free (Postgres); lease_expired: no heartbeat for LEASE_SECONDS)")


if __name__ == "__main__":
    asyncio.run(main())
