"""The GPU arbiter with engines that record what happens to them (no processes): one engine on the GPU at a
time, free before every switch and never under a running task, first come first served, the memory wait
against a device probe, cancellation while waiting."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest
from structlog.testing import capture_logs

from comfy_worker.engine.arbiter import SLACK_BYTES, GpuArbiter
from comfy_worker.errors import ExecutionInterrupted

GB = 1024**3


class Device:
    """A GPU's used memory, moved by the fake engines; read by the probe (optionally after a delay)."""

    source = "fake"

    def __init__(self) -> None:
        self.used = 0
        self.reads = 0

    def used_bytes(self) -> int | None:
        self.reads += 1
        return self.used


class FakeEngine:
    def __init__(self, name: str, log: list[tuple[str, str]], device: Device | None = None,
                 holds: int = 0, release_after_s: float = 0.0, figures: bool = True) -> None:
        self.name = name
        self.log = log
        self.device = device
        self.holds = holds  # bytes it holds on the device once it ran something
        self.release_after_s = release_after_s
        self.figures = figures
        self.held = 0
        self.model: str | None = None
        self.free_error: Exception | None = None

    def ran(self) -> None:
        if self.held == 0 and self.device is not None:
            self.device.used += self.holds
        self.held = self.holds

    async def free_memory(self) -> None:
        self.log.append(("free", self.name))
        if self.free_error is not None:
            raise self.free_error
        held, self.held = self.held, 0
        self.model = None

        async def later() -> None:
            await asyncio.sleep(self.release_after_s)
            if self.device is not None:
                self.device.used -= held

        if self.release_after_s:
            asyncio.get_running_loop().create_task(later())
        elif self.device is not None:
            self.device.used -= held

    async def gpu_bytes(self) -> int | None:
        return self.held if self.figures else None

    def current_model(self) -> str | None:
        return self.model


def engines(log: list[tuple[str, str]], **kw: Any) -> dict[str, FakeEngine]:
    return {n: FakeEngine(n, log, **kw) for n in ("comfyui", "wan2gp")}


async def run_on(arbiter: GpuArbiter, engine: FakeEngine, log: list[tuple[str, str]], seconds: float,
                 tag: str = "") -> None:
    async with arbiter.use(engine.name):
        log.append(("start", engine.name + tag))
        engine.ran()
        await asyncio.sleep(seconds)
        log.append(("end", engine.name + tag))


def check_invariants(log: list[tuple[str, str]]) -> None:
    """No two engines run at once; every run of engine B after engine A ran is preceded by A's free, which
    happened while nothing ran."""
    running: dict[str, int] = {}
    resident: str | None = None
    for what, who in log:
        name = who.split("#")[0]
        if what == "start":
            assert not any(n != name and c for n, c in running.items()), log
            assert resident in (None, name), f"{name} started while {resident} still held memory: {log}"
            running[name] = running.get(name, 0) + 1
            resident = name
        elif what == "end":
            running[name] -= 1
        elif what == "free":
            assert not any(running.values()), f"free of {name} while a task ran: {log}"
            assert resident == name, log
            resident = None


async def test_one_engine_many_holders_and_no_free_without_a_switch() -> None:
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    await asyncio.gather(*(run_on(arbiter, e["comfyui"], log, 0.05, f"#{i}") for i in range(3)))
    starts = [i for i, (w, _) in enumerate(log) if w == "start"]
    assert starts == [0, 1, 2], "tasks of the resident engine overlap (ComfyUI's pipelining)"
    assert ("free", "comfyui") not in log and arbiter.resident == "comfyui" and arbiter.holders == 0


async def test_a_switch_frees_the_resident_engine_after_its_last_task_and_before_the_next() -> None:
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    first = asyncio.create_task(run_on(arbiter, e["comfyui"], log, 0.2))
    await asyncio.sleep(0.05)
    with capture_logs() as events:
        await asyncio.gather(first, run_on(arbiter, e["wan2gp"], log, 0.05))
    assert log == [("start", "comfyui"), ("end", "comfyui"), ("free", "comfyui"), ("start", "wan2gp"),
                   ("end", "wan2gp")]
    [switch] = [x for x in events if x["event"] == "engine_switch"]
    assert switch["from_engine"] == "comfyui" and switch["to_engine"] == "wan2gp" and switch["measured_by"] == "engine"
    assert arbiter.switches == 1 and arbiter.resident == "wan2gp"


async def test_first_come_first_served_across_engines() -> None:
    """A request for the engine that holds the GPU does not jump a request for another engine that came first."""
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    a1 = asyncio.create_task(run_on(arbiter, e["comfyui"], log, 0.2, "#1"))
    await asyncio.sleep(0.02)
    b = asyncio.create_task(run_on(arbiter, e["wan2gp"], log, 0.05))
    await asyncio.sleep(0.02)
    a2 = asyncio.create_task(run_on(arbiter, e["comfyui"], log, 0.05, "#2"))
    await asyncio.sleep(0.02)
    assert arbiter.next_resident() == ("comfyui", None)  # what holds the GPU once the queue has run
    await asyncio.gather(a1, b, a2)
    assert [x for x in log if x[0] == "start"] == [("start", "comfyui#1"), ("start", "wan2gp"), ("start", "comfyui#2")]
    assert log.count(("free", "comfyui")) == 1 and log.count(("free", "wan2gp")) == 1
    check_invariants(log)


@pytest.mark.parametrize("seed", range(12))
async def test_random_mixed_workloads_keep_the_invariants(seed: int) -> None:
    rnd = random.Random(seed)
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    tasks = []
    for i in range(14):
        name = rnd.choice(("comfyui", "wan2gp"))
        tasks.append(asyncio.create_task(run_on(arbiter, e[name], log, rnd.uniform(0, 0.02), f"#{i}")))
        await asyncio.sleep(rnd.uniform(0, 0.01))
    await asyncio.gather(*tasks)
    check_invariants(log)
    runs = [who.split("#")[0] for what, who in log if what == "start"]
    switches = sum(1 for a, b in itertools.pairwise(runs) if a != b)
    assert arbiter.switches == switches == sum(1 for what, _ in log if what == "free")
    assert arbiter.holders == 0 and not arbiter._queue


async def test_the_grant_waits_until_the_device_memory_is_back() -> None:
    log: list[tuple[str, str]] = []
    device = Device()
    e = engines(log, device=device, holds=6 * GB, release_after_s=0.4)
    arbiter = GpuArbiter(e, probe=device, free_timeout_s=10)
    await run_on(arbiter, e["wan2gp"], log, 0.0)
    assert device.used == 6 * GB
    seen: list[int] = []

    async def comfy_task() -> None:
        async with arbiter.use("comfyui"):
            seen.append(device.used)

    with capture_logs() as events:
        await comfy_task()
    assert seen == [0], "ComfyUI was granted before Wan2GP's memory came back"
    [switch] = [x for x in events if x["event"] == "engine_switch"]
    assert switch["measured_by"] == "fake" and switch["freed_bytes"] == 6 * GB and switch["seconds"] >= 0.35
    assert switch["device_used_before"] == 6 * GB and switch["device_used_after"] == 0


async def test_memory_that_never_comes_back_times_out_and_the_switch_goes_on() -> None:
    log: list[tuple[str, str]] = []
    device = Device()
    e = engines(log, device=device, holds=4 * GB, release_after_s=30)
    arbiter = GpuArbiter(e, probe=device, free_timeout_s=0.5)
    await run_on(arbiter, e["comfyui"], log, 0.0)
    with capture_logs() as events:
        await run_on(arbiter, e["wan2gp"], log, 0.0)
    names = [x["event"] for x in events]
    assert "engine_free_timeout" in names and names.index("engine_free_timeout") < names.index("engine_switch")
    assert next(x for x in events if x["event"] == "engine_switch")["timed_out"] is True
    assert log[-2:] == [("start", "wan2gp"), ("end", "wan2gp")]


async def test_without_engine_figures_the_device_must_stop_falling() -> None:
    log: list[tuple[str, str]] = []
    device = Device()
    e = engines(log, device=device, holds=3 * GB, release_after_s=0.3, figures=False)
    arbiter = GpuArbiter(e, probe=device, free_timeout_s=10)
    await run_on(arbiter, e["comfyui"], log, 0.0)
    async with arbiter.use("wan2gp"):
        assert device.used <= SLACK_BYTES


async def test_a_failed_free_is_logged_and_the_switch_goes_on() -> None:
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    await run_on(arbiter, e["comfyui"], log, 0.0)
    e["comfyui"].free_error = RuntimeError("ComfyUI is gone")
    with capture_logs() as events:
        await run_on(arbiter, e["wan2gp"], log, 0.0)
    failed = next(x for x in events if x["event"] == "engine_free_failed")
    assert "ComfyUI is gone" in failed["error"] and arbiter.resident == "wan2gp"


async def test_cancel_while_waiting_leaves_nothing_held() -> None:
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    hold = asyncio.Event()

    async def long_comfy() -> None:
        async with arbiter.use("comfyui"):
            await hold.wait()

    runner = asyncio.create_task(long_comfy())
    await asyncio.sleep(0.01)
    cancel = asyncio.Event()

    async def waiting_wan() -> None:
        async with arbiter.use("wan2gp", cancel=cancel):
            raise AssertionError("granted while ComfyUI held the GPU")

    waiter = asyncio.create_task(waiting_wan())
    await asyncio.sleep(0.05)
    cancel.set()
    with pytest.raises(ExecutionInterrupted, match="waiting for the GPU"):
        await waiter
    hold.set()
    await runner
    assert arbiter.holders == 0 and not arbiter._queue and ("free", "comfyui") not in log
    await run_on(arbiter, e["comfyui"], log, 0.0)  # nothing left behind blocks the next grant


async def test_next_resident_names_the_loaded_model() -> None:
    log: list[tuple[str, str]] = []
    e = engines(log)
    arbiter = GpuArbiter(e)
    assert arbiter.next_resident() == (None, None)
    async with arbiter.use("wan2gp", model="i2v"):
        e["wan2gp"].model = "i2v_2_2"
    assert arbiter.next_resident() == ("wan2gp", "i2v_2_2")
    e["wan2gp"].model = None
    assert arbiter.next_resident() == ("wan2gp", "i2v")  # the engine cannot tell: what its last task asked for
