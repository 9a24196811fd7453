"""Concurrency and crash behaviour of the queue, with real processes.

* 16 claimers in 2 processes drain 5,000 tasks: every task ends complete, claimed exactly once, on its first
  attempt (zero double claims, zero lost tasks), for every store (Supabase through the PostgREST stand-in).
* 12 claimers in 2 processes, each narrowed to two of three task types (a narrowed claim locks the first
  candidates of each of its types, sql/007), drain 1,500 mixed tasks: the same invariants.
* A worker process killed with SIGKILL while holding a lease: after expiry its task is requeued and completed
  by another worker, and the dead worker's late completion is rejected.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.errors import LeaseLost
from comfy_worker.models import NewTask, TaskStatus, WorkerInfo
from tests.integration.conftest import SUPABASE_TEST_KEY, make_store

REPO = Path(__file__).resolve().parents[2]
N_TASKS = 5000


def _target(store: Any, kind: str) -> str:
    if kind == "postgres":
        return store._dsn
    if kind == "sqlite":
        return str(store._path)
    return store._url


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.queue_client", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def _bulk_insert(store: Any, kind: str, n: int) -> list[str]:
    ids = [f"task-{i:05d}" for i in range(n)]
    await store.test_exec(
        "insert into tasks (task_id, task_type, params) values "
        + ",".join(f"('{i}', 'comfy', '{{\"i\": {k}}}')" for k, i in enumerate(ids))
    )
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite", "supabase"])
async def test_16_claimers_in_2_processes_drain_5000_tasks(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store, extra = await make_store(kind, request, tmp_path)
    try:
        ids = await _bulk_insert(store, kind, N_TASKS)
        key = ["--key", SUPABASE_TEST_KEY] if kind == "supabase" else []
        procs = [
            await _spawn("drain", "--store", kind, "--target", _target(store, kind), "--prefix", f"p{p}",
                         "--claimers", "8", "--batch", "2", *key)
            for p in range(2)
        ]
        outs = await asyncio.gather(*(asyncio.wait_for(pr.communicate(), 600) for pr in procs))
        for pr, (_out, err) in zip(procs, outs, strict=True):
            assert pr.returncode == 0, err.decode()[-3000:]
        per_worker: dict[str, list[str]] = {}
        for out, _err in outs:
            per_worker.update(json.loads(out.decode().strip().splitlines()[-1]))
        assert len(per_worker) == 16
        claims = Counter(t for tasks in per_worker.values() for t in tasks)
        doubles = [t for t, c in claims.items() if c > 1]
        assert doubles == [], f"{len(doubles)} tasks completed twice"
        assert set(claims) == set(ids), f"{len(set(ids) - set(claims))} tasks never completed"
        busy_workers = sum(1 for tasks in per_worker.values() if tasks)
        assert busy_workers >= 12, "claimers did not actually run concurrently"
        for tid in ids:  # the final state of every single task
            t = await store.get_task(tid)
            assert t.status is TaskStatus.COMPLETE and t.attempts == 1, (tid, t.status, t.attempts)
            assert t.result is not None and tid in per_worker[t.result["by"]]
    finally:
        await store.close()
        if extra is not None:
            await extra.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_claimers_narrowed_to_overlapping_task_types_drain_a_mixed_queue(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store, extra = await make_store(kind, request, tmp_path)
    types = ("comfy", "i2v", "t2v")
    try:
        ids = [f"task-{i:05d}" for i in range(1500)]
        await store.test_exec(
            "insert into tasks (task_id, task_type, params, priority) values "
            + ",".join(f"('{t}', '{types[k % 3]}', '{{}}', {k % 2})" for k, t in enumerate(ids))
        )
        procs = [
            await _spawn("drain", "--store", kind, "--target", _target(store, kind), "--prefix", f"p{p}",
                         "--claimers", "6", "--batch", "2", "--types", "comfy,i2v;i2v,t2v;t2v,comfy")
            for p in range(2)
        ]
        outs = await asyncio.gather(*(asyncio.wait_for(pr.communicate(), 600) for pr in procs))
        for pr, (_out, err) in zip(procs, outs, strict=True):
            assert pr.returncode == 0, err.decode()[-3000:]
        per_worker: dict[str, list[str]] = {}
        for out, _err in outs:
            per_worker.update(json.loads(out.decode().strip().splitlines()[-1]))
        claims = Counter(t for tasks in per_worker.values() for t in tasks)
        assert [t for t, c in claims.items() if c > 1] == []
        assert set(claims) == set(ids), f"{len(set(ids) - set(claims))} tasks never completed"
        allowed = {f"p{p}-{i}": ({"comfy", "i2v"}, {"i2v", "t2v"}, {"t2v", "comfy"})[i % 3]
                   for p in range(2) for i in range(6)}
        for tid in ids:  # the final state of every single task, and who took it
            t = await store.get_task(tid)
            assert t.status is TaskStatus.COMPLETE and t.attempts == 1, (tid, t.status, t.attempts)
            assert t.result is not None and t.task_type in allowed[t.result["by"]], (tid, t.task_type, t.result)
    finally:
        await store.close()
        if extra is not None:
            await extra.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite", "supabase"])
async def test_sigkilled_worker_task_is_recovered_and_late_report_rejected(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store, extra = await make_store(kind, request, tmp_path)
    try:
        victim = (await store.enqueue(NewTask("comfy", {"v": 1}, max_attempts=3))).task_id
        args = ["hold", "--store", kind, "--target", _target(store, kind), "--prefix", "doomed"]
        if kind == "supabase":
            args += ["--key", SUPABASE_TEST_KEY]
        proc = await _spawn(*args)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, (await proc.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
        held = json.loads(line)
        assert held["task_id"] == victim
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL

        await store.register_worker(WorkerInfo("rescuer", "test", 0, "test"))
        deadline = asyncio.get_running_loop().time() + 20
        claimed = []
        while not claimed and asyncio.get_running_loop().time() < deadline:
            await store.requeue_stale(worker_timeout_s=3600)
            claimed = await store.claim("rescuer", None, 1, 30)
            if not claimed:
                await asyncio.sleep(0.1)
        assert [t.task_id for t in claimed] == [victim]
        assert claimed[0].attempts == 2
        with pytest.raises(LeaseLost):
            await store.complete(victim, held["lease_token"], {"by": "doomed"}, None)
        await store.complete(victim, claimed[0].lease_token or "", {"by": "rescuer"}, None)
        with pytest.raises(LeaseLost):
            await store.complete(victim, held["lease_token"], {"by": "doomed"}, None)
        final = await store.get_task(victim)
        assert final.status is TaskStatus.COMPLETE and final.result == {"by": "rescuer"}
    finally:
        await store.close()
        if extra is not None:
            await extra.stop()
