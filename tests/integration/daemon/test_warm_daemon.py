"""WARM_UP through the real daemon, real PostgreSQL and the real test ComfyUI: the warm-up prompt runs when no task
waits (its output files and history removed), is skipped when a task already waits, gives way at once when a
task is claimed while it runs, and is interrupted in ComfyUI when the worker stops (or the warm-up is cancelled).
The test ComfyUI has no Wan models, so the warm-up graph is replaced by core / test nodes of the same shape (what
is tested is the daemon's behaviour around it, not the Wan graph, which tests/unit/test_warm.py and the GPU bench
cover)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from comfy_worker.daemon import warm
from comfy_worker.engine import ComfyClient
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.daemon.workflows import many_outputs, tag
from tests.integration.engine.conftest import ComfyServer

pytestmark = pytest.mark.comfyui


def _quick(task_type: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                     "filename_prefix": f"{warm.WARMUP_PREFIX}/{task_type}_{tag()}"}},
    }  # fmt: skip


def _slow(task_type: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "CWSlow", "inputs": {"seconds": 60.0, "steps": 600}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                     "filename_prefix": f"{warm.WARMUP_PREFIX}/{task_type}_{tag()}"}},
    }  # fmt: skip


async def _warmup_prompts(base_url: str) -> list[str]:
    """Ids of the prompts in ComfyUI's history whose graph saves under the warm-up prefix."""
    async with httpx.AsyncClient() as c:
        hist = (await c.get(f"{base_url}/history", params={"max_items": 1000})).json()
    return [
        pid
        for pid, entry in hist.items()
        if any(
            str(n.get("inputs", {}).get("filename_prefix", "")).startswith(warm.WARMUP_PREFIX)
            for n in entry["prompt"][2].values()
        )
    ]


async def _queue_empties(base_url: str, timeout: float = 15) -> None:
    """ComfyUI's queue (running and pending) is empty within ``timeout`` s (an interrupt ends the running prompt at
    its node's next step); on failure the prompt is interrupted so later tests find an idle server."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as c:
        while True:
            queue = (await c.get(f"{base_url}/queue")).json()
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            if loop.time() > deadline:
                await c.post(f"{base_url}/queue", json={"clear": True})
                await c.post(f"{base_url}/interrupt", json={})
                raise AssertionError(f"ComfyUI's queue still holds the warm-up prompt: {queue}")
            await asyncio.sleep(0.1)


def _settings(harness: Harness, server: ComfyServer, **env: str) -> Any:
    return harness.settings(WARM_UP="true", COMFY_OUTPUT_DIR=str(server.workdir / "output"),
                            TASK_TYPES="comfy,comfyui_ti2v", **env)  # fmt: skip


async def test_warm_up_runs_when_nothing_waits_and_cleans_up(
    harness: Harness, comfyui_server: ComfyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "warmup_graph", _quick)
    daemon = await harness.start_daemon(settings=_settings(harness, comfyui_server))
    await asyncio.wait_for(daemon.warm.finished.wait(), 60)
    assert daemon.warm.outcome == "done"
    assert not list((comfyui_server.workdir / "output" / warm.WARMUP_PREFIX).glob("*")), "warm-up outputs removed"
    assert await _warmup_prompts(comfyui_server.base_url) == [], "warm-up history deleted"
    task_id = await harness.submit(many_outputs())  # the worker then works as usual
    assert (await wait_task(harness.store, task_id)).status == "complete"


async def test_warm_up_is_skipped_when_a_task_already_waits(
    harness: Harness, comfyui_server: ComfyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "warmup_graph", _slow)
    task_id = await harness.submit(many_outputs())
    t0 = time.monotonic()
    daemon = await harness.start_daemon(settings=_settings(harness, comfyui_server))
    await asyncio.wait_for(daemon.warm.finished.wait(), 60)
    assert daemon.warm.outcome in ("skipped_task_waiting", "aborted_claim")
    task = await wait_task(harness.store, task_id)
    assert task.status == "complete"
    assert time.monotonic() - t0 < 30, "the waiting task did not wait for the 60-s warm-up prompt"
    assert not daemon.warm.running.is_set()


async def test_a_claim_interrupts_a_running_warm_up(
    harness: Harness, comfyui_server: ComfyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "warmup_graph", _slow)
    daemon = await harness.start_daemon(settings=_settings(harness, comfyui_server))
    await asyncio.wait_for(daemon.warm.running.wait(), 30)  # the 60-s warm-up prompt is in ComfyUI
    t0 = time.monotonic()
    task_id = await harness.submit(many_outputs())
    task = await wait_task(harness.store, task_id, timeout=50)
    assert task.status == "complete"
    assert time.monotonic() - t0 < 30, "the task ran without waiting for the warm-up prompt to end"
    await asyncio.wait_for(daemon.warm.finished.wait(), 10)
    assert daemon.warm.outcome == "aborted_claim"


async def test_shutdown_during_a_warm_up_interrupts_its_prompt_in_comfyui(
    harness: Harness, comfyui_server: ComfyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "warmup_graph", _slow)
    daemon = await harness.start_daemon(settings=_settings(harness, comfyui_server))
    runner = harness.daemons[-1][1]
    await asyncio.wait_for(daemon.warm.running.wait(), 30)  # the 60-s warm-up prompt runs in ComfyUI
    t0 = time.monotonic()
    daemon.request_stop("SIGTERM")  # what the signal handler calls
    assert await asyncio.wait_for(runner, 30) == 0
    assert time.monotonic() - t0 < 15, "the shutdown waited for the warm-up prompt"
    assert daemon.warm.outcome == "aborted_shutdown"
    await _queue_empties(comfyui_server.base_url)  # ComfyUI (attached: it outlives the worker) is idle again


async def test_a_cancelled_warm_up_interrupts_its_prompt_in_comfyui(
    harness: Harness, comfyui_server: ComfyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "warmup_graph", _slow)
    ws = warm.WarmStart(_settings(harness, comfyui_server), ["comfyui_ti2v"])
    client = ComfyClient(comfyui_server.base_url)
    try:
        running = asyncio.create_task(ws.warm_up(SimpleNamespace(started=True, client=client), harness.store))
        await asyncio.wait_for(ws.running.wait(), 30)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert ws.outcome == "aborted_cancelled"
        await _queue_empties(comfyui_server.base_url)
    finally:
        await client.aclose()


async def test_prefetch_reads_the_named_files_while_the_daemon_starts(
    harness: Harness, comfyui_server: ComfyServer, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "a.safetensors").write_bytes(b"\x02" * 300_000)
    settings = harness.settings(WARM_PREFETCH="true", MODELS_DIR=str(models),
                                WARM_MODELS="vae/a.safetensors,vae/missing.safetensors")  # fmt: skip
    daemon = await harness.start_daemon(settings=settings)
    assert daemon.warm._prefetch is not None
    assert warm.wait_prefetch(daemon.warm._prefetch, 30)
    assert daemon.warm.prefetched_bytes == 300_000
    task_id = await harness.submit(many_outputs())
    assert (await wait_task(harness.store, task_id)).status == "complete"
