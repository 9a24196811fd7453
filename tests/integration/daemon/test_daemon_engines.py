"""One daemon, two engines: the real test ComfyUI (attached) and Wan2GP (the real child on the fake Wan2GP
checkout, tests/standins/wan2gp, with its stand-in CUDA counters), real Postgres, a real HTTP server for inputs,
local storage.

Every handler and the engines' ``free_memory`` are wrapped to record, with times, when each task's GPU stages
(submit + execute) ran and when each engine was told to free its memory; the invariants are checked on that
log: one engine on the GPU at a time, a free of the previous engine before every switch, no free while any task
runs on the GPU, and Wan2GP's own memory figures back to zero before ComfyUI runs."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.cli import build_registry
from comfy_worker.daemon import Daemon
from comfy_worker.models import NewTask, TaskStatus
from comfy_worker.storage import LocalStorage
from comfy_worker.store.postgres import PostgresStore
from tests.comfy_server import comfy_args, comfy_test_paths, free_port
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import FAST, Harness, wait_task
from tests.integration.wan2gp.conftest import STANDIN

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[3]
MODEL_MB = 48
PNG = (  # 1x1 PNG
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00"
    b"\x00\x00\rIDATx\xdac\xfc\xcf\xc0P\x0f\x00\x04\x85\x01\x80\x84\xa9\x8c!\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture(autouse=True)
def standin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Wan2GP child inherits: a model of MODEL_MB held as "GPU" memory (the stand-in's CUDA counters)."""
    for key, value in {"WGP_STANDIN_CUDA": "1", "WGP_STANDIN_MODEL_MB": str(MODEL_MB), "WGP_STANDIN_LOAD_S": "0.2",
                       "WGP_STANDIN_STEP_S": "0.02"}.items():
        monkeypatch.setenv(key, value)


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[float, str, str, str]] = []  # (time, what, engine, task id)
        self.freed: list[tuple[str, Any]] = []

    def add(self, what: str, engine: str, task_id: str = "") -> None:
        self.log.append((time.monotonic(), what, engine, task_id))


class RecordedHandler:
    """A handler that records when its GPU stages start and end (it delegates everything)."""

    def __init__(self, inner: Any, rec: Recorder) -> None:
        self._inner, self._rec = inner, rec
        self.engine = getattr(inner, "engine", "comfyui")
        self.task_type = inner.task_type
        self.model = getattr(inner, "model", None)

    async def prepare(self, ctx: Any) -> Any:
        self._rec.add("prepare", self.engine, ctx.task.task_id)
        prepared = await self._inner.prepare(ctx)
        self._rec.add("prepared", self.engine, ctx.task.task_id)
        return prepared

    async def submit(self, ctx: Any, prepared: Any) -> Any:
        self._rec.add("gpu_start", self.engine, ctx.task.task_id)
        submit = getattr(self._inner, "submit", None)
        return await submit(ctx, prepared) if submit is not None else prepared

    async def execute(self, ctx: Any, prepared: Any) -> Any:
        try:
            return await self._inner.execute(ctx, prepared)
        finally:
            self._rec.add("gpu_end", self.engine, ctx.task.task_id)

    async def finish(self, ctx: Any, executed: Any) -> Any:
        return await self._inner.finish(ctx, executed)


def record_frees(engine: Any, rec: Recorder) -> None:
    real = engine.free_memory

    async def free_memory() -> Any:
        rec.add("free_start", engine.name)
        try:
            report = await real()
            rec.freed.append((engine.name, report))
            return report
        finally:
            rec.add("free_end", engine.name)

    engine.free_memory = free_memory


def check_gpu_log(rec: Recorder) -> int:
    """The invariants (module docstring) on the recorded log; returns the number of switches."""
    running: dict[str, set[str]] = {"comfyui": set(), "wan2gp": set()}
    resident: str | None = None
    freeing: str | None = None
    last: str | None = None  # the engine of the last task that ran
    switches = 0
    for _t, what, engine, task_id in sorted(rec.log):
        other = "wan2gp" if engine == "comfyui" else "comfyui"
        if what == "gpu_start":
            assert freeing is None, f"{engine} task started while {freeing} was freeing: {rec.log}"
            assert not running[other], f"{engine} task {task_id} started while {other} ran {running[other]}"
            if resident not in (None, engine):
                raise AssertionError(f"{engine} ran while {resident} still held its memory (no free): {rec.log}")
            switches += last is not None and last != engine
            running[engine].add(task_id)
            last = engine
            resident = engine
        elif what == "gpu_end":
            running[engine].discard(task_id)
        elif what == "free_start":
            assert not running["comfyui"] and not running["wan2gp"], f"free of {engine} while tasks ran: {running}"
            assert resident == engine
            freeing = engine
        elif what == "free_end":
            freeing, resident = None, None
    return switches


async def start(harness: Harness, rec: Recorder, tmp_path: Path, worker_id: str = "cw-both", **env: str) -> Daemon:
    settings = harness.settings(
        WAN2GP_PATH=str(STANDIN), WAN2GP_ARGS=f"--loras {tmp_path / 'loras'}", WAN2GP_STARTUP_TIMEOUT="60",
        WORK_DIR=str(tmp_path / "work"), **env,
    )
    registry = build_registry(settings, worker_id=worker_id)
    registry.handlers = {t: RecordedHandler(h, rec) for t, h in registry.handlers.items()}
    for engine in registry.engines.values():
        record_frees(engine, rec)
    daemon = Daemon(settings, store=PostgresStore(harness.dsn), storage=LocalStorage(Path(settings.local_storage_dir)),
                    registry=registry, worker_id=worker_id, gpu_probe=None)
    await daemon.start()
    harness.daemons.append((daemon, asyncio.create_task(daemon.run())))
    return daemon


async def enqueue(harness: Harness, task_type: str, params: dict[str, Any], **kw: Any) -> str:
    return (await harness.store.enqueue(NewTask(task_type, params, **kw))).task_id


def wan(prompt: str = "a fox", **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "resolution": "32x32", "video_length": 5, "num_inference_steps": 4, **extra}


async def worker_row(harness: Harness, worker_id: str) -> dict[str, Any]:
    snap = await harness.store.fleet_snapshot()
    return next(w for w in snap["workers"] if w["id"] == worker_id)


async def test_a_mixed_queue_runs_each_type_on_its_engine_and_hands_the_gpu_over_cleanly(
    harness: Harness, http_files: Any, tmp_path: Path
) -> None:
    image = http_files("start.png", PNG)
    rec = Recorder()
    daemon = await start(harness, rec, tmp_path, ENGINE_SWITCH_MAX_WAIT_S="0")  # claim order = queue order
    row = await worker_row(harness, "cw-both")
    engines = row["metadata"]["engines"]
    assert set(engines) == {"comfyui", "wan2gp"} and {e["state"] for e in engines.values()} == {"stopped"}
    assert row["metadata"]["healthy"] is True and {"comfy", "i2v", "t2v", "prompt_runner"} <= set(row["task_types"])

    ids = []
    for i in range(3):  # alternate: every task is a switch
        ids.append(("comfy", await enqueue(harness, "comfy", {"workflow": wf.slow(0.3)})))
        kind = "i2v" if i % 2 else "t2v"
        params = wan(f"task {i}", image_start=image) if kind == "i2v" else wan(f"task {i}")
        ids.append((kind, await enqueue(harness, kind, params)))
    for kind, tid in ids:
        task = await wait_task(harness.store, tid, timeout=120)
        assert task.status is TaskStatus.COMPLETE, (kind, task.error)
        if kind == "comfy":
            assert task.result["prompt_id"] and task.result["outputs"][0]["kind"] == "image"
        else:
            assert task.result["engine"] == "wan2gp" and task.result["model"] == kind
            assert task.result["outputs"][0]["kind"] == "video" and task.output_url
    switches = check_gpu_log(rec)
    assert switches == 5 == daemon.host.arbiter.switches
    wan_frees = [report for name, report in rec.freed if name == "wan2gp"]
    assert len(wan_frees) == 2 and all(m.gpu_reserved_bytes == 0 for m in wan_frees)  # its own figures: all back
    assert sum(1 for name, _ in rec.freed if name == "comfyui") == 3

    await asyncio.sleep(float(FAST["HEARTBEAT_INTERVAL"]) * 3)
    meta = (await worker_row(harness, "cw-both"))["metadata"]
    assert meta["engines"]["comfyui"]["state"] == "ready" and meta["engines"]["wan2gp"]["state"] == "ready"
    assert meta["engines"]["wan2gp"]["pid"] and meta["gpu_arbiter"]["switches"] == 5
    last = meta["gpu_arbiter"]["last_switch"]
    assert (last["from_engine"], last["to_engine"]) == ("comfyui", "wan2gp")


async def test_claims_prefer_the_resident_engine_so_a_mixed_queue_switches_once(
    harness: Harness, tmp_path: Path
) -> None:
    rec = Recorder()
    comfy = [await enqueue(harness, "comfy", {"workflow": wf.slow(0.2)}) for _ in range(1)]
    mixed = []
    for i in range(3):
        mixed.append(await enqueue(harness, "t2v", wan(f"t2v {i}")))
        mixed.append(await enqueue(harness, "comfy", {"workflow": wf.slow(0.2)}))
    await start(harness, rec, tmp_path)  # ENGINE_SWITCH_MAX_WAIT_S: the default (300 s)
    for tid in comfy + mixed:
        task = await wait_task(harness.store, tid, timeout=120)
        assert task.status is TaskStatus.COMPLETE, task.error
    assert check_gpu_log(rec) == 1  # every ComfyUI task, then every Wan2GP task (the plain order: 6 switches)
    order = [engine for _t, what, engine, _id in sorted(rec.log) if what == "gpu_start"]
    assert order == ["comfyui"] * 4 + ["wan2gp"] * 3


async def test_inputs_of_the_next_task_download_while_the_other_engine_runs(
    harness: Harness, http_files: Any, tmp_path: Path
) -> None:
    image = http_files("late.png", PNG)
    rec = Recorder()
    slow = await enqueue(harness, "comfy", {"workflow": wf.slow(2.0)}, priority=10)
    nxt = await enqueue(harness, "i2v", wan("next", image_start=image))
    await start(harness, rec, tmp_path, ENGINE_SWITCH_MAX_WAIT_S="0")
    for tid in (slow, nxt):
        assert (await wait_task(harness.store, tid, timeout=120)).status is TaskStatus.COMPLETE
    times = {(what, task_id): t for t, what, _e, task_id in rec.log}
    assert times[("prepare", nxt)] < times[("gpu_end", slow)], "the i2v task was prepared only after ComfyUI ended"
    assert times[("gpu_start", nxt)] > times[("gpu_end", slow)]
    assert check_gpu_log(rec) == 1


async def test_a_wan2gp_crash_mid_task_is_restarted_and_the_task_retried(harness: Harness, tmp_path: Path) -> None:
    rec = Recorder()
    daemon = await start(harness, rec, tmp_path)
    tid = await enqueue(harness, "t2v", wan("[standin:crash_once=2] crash me"), max_attempts=3)
    task = await wait_task(harness.store, tid, timeout=120)
    assert task.status is TaskStatus.COMPLETE, task.error
    assert task.attempts == 2, "the crashed attempt counts and the retry completes"
    engine = daemon.registry.engines["wan2gp"]
    assert engine.restarts == 1 and engine.accepting and engine.health()["state"] == "ready"


async def test_bad_wan2gp_params_fail_at_once_naming_the_key(harness: Harness, tmp_path: Path) -> None:
    rec = Recorder()
    await start(harness, rec, tmp_path)
    tid = await enqueue(harness, "i2v", wan("no image", strength=0.4), max_attempts=3)
    task = await wait_task(harness.store, tid)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "params.strength is not a parameter of i2v tasks" in (task.error or "")
    assert task.error_details["field"] == "strength" and task.error_details["error_type"] == "InputRejected"
    assert not any(what == "gpu_start" for _t, what, _e, _id in rec.log), "refused before the GPU"


def cli_env(harness: Harness, **env: str) -> dict[str, str]:
    return {**os.environ, **FAST, "DATABASE_URL": harness.dsn, "LOCAL_STORAGE_DIR": str(harness.storage_dir),
            "PYTHONPATH": str(REPO), **env}


async def test_python_m_worker_wgp_runs_the_wan2gp_types_alone(harness: Harness, tmp_path: Path) -> None:
    comfy = await enqueue(harness, "comfy", {"workflow": wf.slow(0.1)})
    wan_task = await enqueue(harness, "t2v", wan("alone"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker_wgp", "--worker-id", "wgp-alone", "--exit-when-idle",
        env=cli_env(harness, COMFY_URL=harness.comfy_url, WAN2GP_PATH=str(STANDIN), WORK_DIR=str(tmp_path / "w"),
                    WAN2GP_ARGS=f"--loras {tmp_path / 'loras'}"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    task = await harness.store.get_task(wan_task)
    assert task.status is TaskStatus.COMPLETE and task.worker_id == "wgp-alone"
    assert (await harness.store.get_task(comfy)).status is TaskStatus.QUEUED, "a ComfyUI task is not its business"
    row = await worker_row(harness, "wgp-alone")
    assert "comfy" not in row["task_types"] and "t2v" in row["task_types"]
    assert set(row["metadata"]["engines"]) == {"wan2gp"}


def test_a_wan2gp_path_without_wan2gp_stops_the_worker_with_one_line(harness: Harness, tmp_path: Path) -> None:
    empty = tmp_path / "not-wan2gp"
    empty.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "comfy_worker", "--worker-id", "w-bad-wan"],
        env=cli_env(harness, COMFY_URL=harness.comfy_url, WAN2GP_PATH=str(empty)),
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"comfy-worker: error: WAN2GP_PATH: {empty} holds no Wan2GP (no wgp.py): point it at a Wan2GP checkout"
    )


@pytest.mark.slow
async def test_comfyui_dying_while_wan2gp_runs_costs_the_waiting_comfy_task_no_attempt(
    harness: Harness, tmp_path: Path
) -> None:
    """A ComfyUI task prepared and waiting for the GPU had nothing in ComfyUI: when ComfyUI dies meanwhile it is
    not failed; once granted it waits for the restarted ComfyUI and runs (one attempt)."""
    python, tree = comfy_test_paths()
    workdir = tmp_path / "comfy"
    workdir.mkdir()
    rec = Recorder()
    daemon = await start(
        harness, rec, tmp_path, "cw-launch", COMFY_URL="", COMFY_PATH=str(tree), COMFY_PYTHON=str(python),
        COMFY_PORT=str(free_port()), COMFY_ARGS=shlex.join(comfy_args(workdir)), ENGINE_SWITCH_MAX_WAIT_S="0",
    )
    warm = await enqueue(harness, "comfy", {"workflow": wf.slow(0.1)})  # starts ComfyUI (lazily)
    assert (await wait_task(harness.store, warm, timeout=120)).status is TaskStatus.COMPLETE
    first_pid = daemon.supervisor.pid
    assert first_pid is not None
    slow_wan = await enqueue(harness, "t2v", wan("[standin:step_s=0.4] slow", num_inference_steps=12))

    async def until(what: str, task_id: str) -> None:
        for _ in range(1200):
            if any(w == what and tid == task_id for _t, w, _e, tid in rec.log):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {what} for {task_id}: {rec.log}")

    await until("gpu_start", slow_wan)  # Wan2GP holds the GPU
    waiting = await enqueue(harness, "comfy", {"workflow": wf.slow(0.1)})
    await until("prepared", waiting)  # prepared, waiting for the GPU: nothing of it is in ComfyUI
    assert not any(w == "gpu_start" and tid == waiting for _t, w, _e, tid in rec.log)
    os.kill(first_pid, signal.SIGKILL)
    for tid in (slow_wan, waiting):
        task = await wait_task(harness.store, tid, timeout=120)
        assert task.status is TaskStatus.COMPLETE and task.attempts == 1, (tid, task.error)
    assert daemon.supervisor.pid not in (None, first_pid) and daemon.supervisor.restarts >= 1
    check_gpu_log(rec)
