"""One conformance suite, run against every store (postgres, sqlite, supabase): the queue's rules.

Time-based rules (leases, backoff) use short real durations: a lease of a fraction of a second is the
event under test, so waiting for it to pass is the behaviour, not a synchronisation shortcut.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from comfy_worker.errors import InvalidArgument, LeaseLost, TaskNotFound, WorkerIdInUse, WorkerNotFound
from comfy_worker.models import NewTask, TaskStatus, WorkerInfo, WorkerStatus
from comfy_worker.store.base import TaskStore

LEASE = 30.0


async def worker(store: TaskStore, wid: str = "w1", **meta: Any) -> str:
    await store.register_worker(WorkerInfo(wid, "test-host", 1, "test", ("comfy",), dict(meta)))
    return wid


async def enqueue(store: TaskStore, task_type: str = "comfy", **kw: Any) -> str:
    params = kw.pop("params", {"n": 1})
    return (await store.enqueue(NewTask(task_type, params, **kw))).task_id


async def wait_until_stale(store: TaskStore, *, timeout: float = 10.0) -> Any:
    """Call requeue_stale until it recovers something (the lease runs out in real time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = await store.requeue_stale(worker_timeout_s=3600)
        if report.requeued or report.failed:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError("no lease expired within the timeout")


# --- claiming --------------------------------------------------------------------------------------------


async def test_claim_order_priority_then_run_at_then_age(store: TaskStore) -> None:
    w = await worker(store)
    old = await enqueue(store, params={"i": "old"})
    high = await enqueue(store, priority=5)
    later = await enqueue(store, run_at=datetime.now(UTC) - timedelta(seconds=30))
    newest = await enqueue(store)
    order = [t.task_id for t in await store.claim(w, None, 10, LEASE)]
    assert sorted(order) == sorted([old, high, later, newest])
    claimed = [(await store.get_task(i)) for i in order]
    assert order[0] == high
    # among priority 0: run_at earliest first (the backdated one), then by creation
    assert order[1] == later
    assert order[2:] == [old, newest]
    assert all(t.status is TaskStatus.RUNNING and t.attempts == 1 and t.worker_id == w for t in claimed)
    assert len({t.lease_token for t in claimed}) == 4


async def test_claim_limits_and_filters(store: TaskStore) -> None:
    w = await worker(store)
    a = await enqueue(store, "comfy")
    b = await enqueue(store, "i2v")
    first = await store.claim(w, ["i2v"], 5, LEASE)
    assert [t.task_id for t in first] == [b]
    assert await store.claim(w, ["s2v"], 5, LEASE) == []
    second = await store.claim(w, None, 1, LEASE)
    assert [t.task_id for t in second] == [a]
    assert await store.claim(w, None, 1, LEASE) == []


async def test_future_run_at_is_not_claimable(store: TaskStore) -> None:
    w = await worker(store)
    await enqueue(store, run_at=datetime.now(UTC) + timedelta(hours=1))
    assert await store.claim(w, None, 1, LEASE) == []


async def test_draining_worker_claims_nothing(store: TaskStore) -> None:
    w = await worker(store)
    await enqueue(store)
    await store.set_worker_status(w, "draining")
    assert await store.claim(w, None, 1, LEASE) == []
    reply = await store.heartbeat(w, LEASE)
    assert reply.worker_status is WorkerStatus.DRAINING
    await store.set_worker_status(w, "idle")
    assert len(await store.claim(w, None, 1, LEASE)) == 1


async def test_worker_status_follows_its_tasks(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, LEASE)
    snap = await store.fleet_snapshot()
    row = next(r for r in snap["workers"] if r["id"] == w)
    assert row["status"] == "busy" and row["current_task_id"] == t
    await store.complete(t, task.lease_token, {"ok": True}, None)
    snap = await store.fleet_snapshot()
    row = next(r for r in snap["workers"] if r["id"] == w)
    assert row["status"] == "idle" and row["current_task_id"] is None and row["tasks_completed"] == 1


# --- completing and failing --------------------------------------------------------------------------------


async def test_complete_with_the_lease_token(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, LEASE)
    done = await store.complete(t, task.lease_token, {"outputs": [{"filename": "a.mp4"}]}, "https://x/a.mp4")
    assert done.status is TaskStatus.COMPLETE
    got = await store.get_task(t)
    assert got.output_url == "https://x/a.mp4"
    assert got.result == {"outputs": [{"filename": "a.mp4"}]}
    assert got.completed_at is not None and got.started_at is not None
    assert got.lease_token is None


async def test_stale_token_is_rejected_and_changes_nothing(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, LEASE)
    wrong = "00000000-0000-4000-8000-000000000000"
    for call in (
        store.complete(t, wrong, {}, None),
        store.fail(t, wrong, "x"),
        store.release(t, wrong),
        store.update_progress(t, wrong, {"p": 1}),
    ):
        with pytest.raises(LeaseLost) as info:
            await call
        assert t in str(info.value) and "rejected" in str(info.value)
    got = await store.get_task(t)
    assert got.status is TaskStatus.RUNNING and got.lease_token == task.lease_token and got.progress is None
    await store.complete(t, task.lease_token, {}, None)
    with pytest.raises(LeaseLost, match="already complete"):
        await store.complete(t, task.lease_token, {}, None)


async def test_retryable_failure_backs_off_exponentially_with_jitter(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store, max_attempts=5)
    delays = []
    for _attempt in range(3):
        await store.fail(t, (await claim_one(store, w, force=True)).lease_token, "network blip",
                         {"where": "download"}, retryable=True, backoff_base_s=10, backoff_cap_s=25)
        got = await store.get_task(t)
        assert got.status is TaskStatus.QUEUED and got.error == "network blip"
        assert got.error_details and got.error_details["where"] == "download" and got.error_details["retryable"]
        delays.append((got.run_at - datetime.now(UTC)).total_seconds())
        assert await store.claim(w, None, 1, LEASE) == []  # not due yet
    # base*2^(n-1) capped at 25, times a jitter factor in [0.5, 1]
    for delay, nominal in zip(delays, (10, 20, 25), strict=True):
        assert nominal * 0.5 - 1 <= delay <= nominal + 0.5, (delays, nominal)
    assert (await store.get_task(t)).attempts == 3


async def claim_one(store: TaskStore, w: str, *, force: bool = False) -> Any:
    """Claim the only task; with force, first make any queued task due (tests of backoff use this)."""
    if force:
        await _make_due(store)
    [task] = await store.claim(w, None, 1, LEASE)
    return task


async def _make_due(store: TaskStore) -> None:
    """Move every queued task's run_at to the past, in the store's own database (see conftest)."""
    await store.test_exec(  # type: ignore[attr-defined]
        "update tasks set run_at = '2000-01-01T00:00:00.000000+00:00' where status = 'queued'"
    )


async def test_max_attempts_then_failed_for_good(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store, max_attempts=2)
    await store.fail(t, (await claim_one(store, w)).lease_token, "boom 1", backoff_base_s=0, backoff_cap_s=0)
    assert (await store.get_task(t)).status is TaskStatus.QUEUED
    final = await store.fail(t, (await claim_one(store, w)).lease_token, "boom 2", backoff_base_s=0, backoff_cap_s=0)
    assert final.status is TaskStatus.FAILED and final.attempts == 2
    got = await store.get_task(t)
    assert got.error == "boom 2" and got.error_details["gave_up"] == "max_attempts reached"
    assert await store.claim(w, None, 1, LEASE) == []
    snap = await store.fleet_snapshot()
    assert any(f["task_id"] == t for f in snap["failures"])


async def test_permanent_failure_fails_at_once(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store, max_attempts=5)
    got = await store.fail(t, (await claim_one(store, w)).lease_token, "unknown node type Foo",
                           {"node_errors": {"3": "x"}}, retryable=False)
    assert got.status is TaskStatus.FAILED and got.attempts == 1
    assert got.error_details["node_errors"] == {"3": "x"}
    assert got.error_details["gave_up"] == "permanent error"


# --- dependencies, dedupe, idempotency -------------------------------------------------------------------


async def test_depends_on_waits_for_completion(store: TaskStore) -> None:
    w = await worker(store)
    first = await enqueue(store)
    second = await enqueue(store, depends_on=(first,))
    [a] = await store.claim(w, None, 5, LEASE)
    assert a.task_id == first
    assert await store.claim(w, None, 5, LEASE) == []
    await store.complete(first, a.lease_token, {}, None)
    [b] = await store.claim(w, None, 5, LEASE)
    assert b.task_id == second


async def test_failed_dependency_fails_dependents_with_the_reason(store: TaskStore) -> None:
    w = await worker(store)
    first = await enqueue(store, max_attempts=1)
    second = await enqueue(store, depends_on=(first,))
    third = await enqueue(store, depends_on=(second,))
    await store.fail(first, (await claim_one(store, w)).lease_token, "boom", retryable=False)
    for dep, tid in ((first, second), (second, third)):
        got = await store.get_task(tid)
        assert got.status is TaskStatus.FAILED
        assert dep in (got.error or "") and "failed" in (got.error or "")


async def test_cancelled_dependency_cancels_dependents(store: TaskStore) -> None:
    first = await enqueue(store)
    second = await enqueue(store, depends_on=(first,))
    await store.cancel(first, "not needed")
    got = await store.get_task(second)
    assert got.status is TaskStatus.CANCELLED and first in (got.error or "")


async def test_depends_on_unknown_task_is_rejected(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound, match="depends_on"):
        await enqueue(store, depends_on=("no-such-task",))
    assert (await store.fleet_snapshot())["queue"] == []


async def test_dedupe_key_unique_among_active_tasks(store: TaskStore) -> None:
    w = await worker(store)
    a = await enqueue(store, dedupe_key="render:sunset")
    b = await enqueue(store, dedupe_key="render:sunset")
    assert a == b
    [task] = await store.claim(w, None, 1, LEASE)
    assert await enqueue(store, dedupe_key="render:sunset") == a  # running still counts
    await store.complete(a, task.lease_token, {}, None)
    c = await enqueue(store, dedupe_key="render:sunset")
    assert c != a


async def test_caller_chosen_task_id_is_idempotent(store: TaskStore) -> None:
    a = await enqueue(store, task_id="abc-123", params={"v": 1})
    b = await enqueue(store, task_id="abc-123", params={"v": 2})
    assert a == b == "abc-123"
    assert (await store.get_task("abc-123")).params == {"v": 1}


# --- cancel, release, progress ---------------------------------------------------------------------------


async def test_cancel_queued_task(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    got = await store.cancel(t, "user changed their mind")
    assert got.status is TaskStatus.CANCELLED and got.error == "user changed their mind"
    assert await store.claim(w, None, 1, LEASE) == []
    assert (await store.cancel(t)).status is TaskStatus.CANCELLED  # idempotent


async def test_cancel_running_task_is_reported_by_heartbeat(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, LEASE)
    await store.cancel(t)
    reply = await store.heartbeat(w, LEASE, {}, [t])
    assert reply.cancelled == (t,) and reply.lost == ()
    with pytest.raises(LeaseLost, match="cancelled"):
        await store.complete(t, task.lease_token, {}, None)
    assert (await store.get_task(t)).status is TaskStatus.CANCELLED


async def test_cancel_finished_task_is_an_error(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    await store.complete(t, (await claim_one(store, w)).lease_token, {}, None)
    with pytest.raises(InvalidArgument, match="already complete"):
        await store.cancel(t)


async def test_release_returns_the_attempt(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store, max_attempts=1)
    [task] = await store.claim(w, None, 1, LEASE)
    released = await store.release(t, task.lease_token)
    assert released.status is TaskStatus.QUEUED and released.attempts == 0 and released.worker_id is None
    [again] = await store.claim(w, None, 1, LEASE)
    assert again.task_id == t and again.attempts == 1 and again.lease_token != task.lease_token


async def test_progress_and_checkpoint_survive_requeue(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, 0.3)
    await store.update_progress(t, task.lease_token, {"step": "LOW 2/5", "percent": 40},
                                {"completed_steps": ["high_1", "low_1"]})
    got = await store.get_task(t)
    assert got.progress == {"step": "LOW 2/5", "percent": 40}
    assert got.checkpoint == {"completed_steps": ["high_1", "low_1"]}
    await store.update_progress(t, task.lease_token, {"step": "HIGH 3/5"})  # checkpoint kept when omitted
    assert (await store.get_task(t)).checkpoint == {"completed_steps": ["high_1", "low_1"]}
    await wait_until_stale(store)
    w2 = await worker(store, "w2")
    [again] = await store.claim(w2, None, 1, LEASE)
    assert again.checkpoint == {"completed_steps": ["high_1", "low_1"]}


# --- leases, heartbeats, recovery ------------------------------------------------------------------------


async def test_expired_lease_is_requeued_and_late_report_rejected(store: TaskStore) -> None:
    w1 = await worker(store, "w1")
    w2 = await worker(store, "w2")
    t = await enqueue(store, max_attempts=3)
    [task] = await store.claim(w1, None, 1, 0.2)
    report = await wait_until_stale(store)
    assert report.requeued == (t,)
    got = await store.get_task(t)
    assert got.status is TaskStatus.QUEUED and "lease expired" in (got.error or "") and "w1" in (got.error or "")
    [again] = await store.claim(w2, None, 1, LEASE)
    assert again.attempts == 2
    with pytest.raises(LeaseLost, match="held by worker w2"):
        await store.complete(t, task.lease_token, {}, None)
    reply = await store.heartbeat(w1, LEASE, {}, [t])
    assert reply.lost == (t,)
    await store.complete(t, again.lease_token, {"by": "w2"}, None)
    assert (await store.get_task(t)).result == {"by": "w2"}


async def test_expired_lease_on_last_attempt_fails(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store, max_attempts=1)
    await store.claim(w, None, 1, 0.2)
    report = await wait_until_stale(store)
    assert report.failed == (t,)
    got = await store.get_task(t)
    assert got.status is TaskStatus.FAILED and "lease expired" in (got.error or "")


async def test_heartbeat_extends_leases(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, 2.0)
    for _ in range(4):  # 3 s in all, past the first lease; each heartbeat renews it with room for a slow CI
        await asyncio.sleep(0.75)
        reply = await store.heartbeat(w, 2.0, {"gpu": "test"}, [t])
        assert reply.lost == () and reply.cancelled == ()
        assert (await store.requeue_stale(worker_timeout_s=3600)).requeued == ()
    assert (await store.get_task(t)).lease_expires_at > datetime.now(UTC)
    await store.complete(t, task.lease_token, {}, None)


async def test_silent_workers_are_marked_lost(store: TaskStore) -> None:
    w = await worker(store, "quiet")
    await asyncio.sleep(1.2)
    report = await store.requeue_stale(worker_timeout_s=1)
    assert report.lost_workers == (w,)
    snap = await store.fleet_snapshot()
    assert next(r for r in snap["workers"] if r["id"] == w)["status"] == "lost"
    reply = await store.heartbeat(w, LEASE)  # it was alive after all
    assert reply.worker_status is WorkerStatus.IDLE


async def test_reregistering_worker_id_requeues_what_it_held(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    await store.claim(w, None, 1, LEASE)
    await worker(store)  # same id, new process
    got = await store.get_task(t)
    assert got.status is TaskStatus.QUEUED and "restarted" in (got.error or "")


async def test_deregister_releases_without_spending_attempts(store: TaskStore) -> None:
    w = await worker(store)
    t = await enqueue(store)
    await store.claim(w, None, 1, LEASE)
    await store.deregister_worker(w)
    got = await store.get_task(t)
    assert got.status is TaskStatus.QUEUED and got.attempts == 0
    snap = await store.fleet_snapshot()
    assert next(r for r in snap["workers"] if r["id"] == w)["status"] == "stopped"


# --- bad input -------------------------------------------------------------------------------------------


async def test_bad_input_gives_clear_errors_and_no_partial_state(store: TaskStore) -> None:
    w = await worker(store)
    with pytest.raises(WorkerNotFound, match="no worker has id 'ghost'"):
        await store.claim("ghost", None, 1, LEASE)
    with pytest.raises(WorkerNotFound):
        await store.heartbeat("ghost", LEASE)
    with pytest.raises(InvalidArgument, match="lease_seconds"):
        await store.claim(w, None, 1, -5)
    with pytest.raises(InvalidArgument, match="lease_seconds"):
        await store.heartbeat(w, 0)
    with pytest.raises(InvalidArgument, match="params must be a JSON object"):
        await store.enqueue(NewTask("comfy", ["not", "an", "object"]))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await store.set_worker_status(w, "on-holiday")
    with pytest.raises(InvalidArgument, match="n must be"):
        await store.claim(w, None, 0, LEASE)
    for call in (store.get_task("nope"), store.cancel("nope"),
                 store.complete("nope", "00000000-0000-4000-8000-000000000000", {}, None)):
        with pytest.raises(TaskNotFound, match="nope"):
            await call
    t = await enqueue(store)
    [task] = await store.claim(w, None, 1, LEASE)
    with pytest.raises(InvalidArgument):
        await store.complete(t, "not-a-uuid", {}, None)
    with pytest.raises(InvalidArgument, match="result must be a JSON object"):
        await store.complete(t, task.lease_token, ["x"], None)  # type: ignore[arg-type]
    # nothing half-done: the task is still running under its lease, the worker unchanged
    got = await store.get_task(t)
    assert got.status is TaskStatus.RUNNING and got.lease_token == task.lease_token and got.result is None
    snap = await store.fleet_snapshot()
    assert [r["id"] for r in snap["workers"]] == [w]
    assert sum(q["queued"] + q["running"] for q in snap["queue"]) == 1


# --- monitoring and wake-ups -----------------------------------------------------------------------------


async def test_fleet_snapshot_summarises_queue(store: TaskStore) -> None:
    w = await worker(store)
    for _ in range(3):
        await enqueue(store, "comfy")
    await enqueue(store, "i2v")
    [task] = await store.claim(w, ["comfy"], 1, LEASE)
    snap = await store.fleet_snapshot()
    queue = {q["task_type"]: q for q in snap["queue"]}
    assert queue["comfy"]["queued"] == 2 and queue["comfy"]["running"] == 1
    assert queue["i2v"]["queued"] == 1 and queue["i2v"]["running"] == 0
    assert queue["comfy"]["oldest_queued_age_s"] >= 0
    await store.complete(task.task_id, task.lease_token, {}, None)
    snap = await store.fleet_snapshot()
    thr = {r["task_type"]: r for r in snap["throughput"]}
    assert thr["comfy"]["completed"] == 1


async def test_wait_for_work_wakes_on_enqueue(store: TaskStore) -> None:
    w = await worker(store)
    if hasattr(store, "wait_listening"):
        assert await store.wait_listening(10)
    await store.wait_for_work(0.01)  # drain any start-up wake-up
    waiter = asyncio.create_task(store.wait_for_work(10))
    await asyncio.sleep(0)
    t0 = time.monotonic()
    await enqueue(store)
    assert await waiter is True
    assert time.monotonic() - t0 < 5
    assert len(await store.claim(w, None, 1, LEASE)) == 1


async def test_work_ready_says_whether_a_task_of_the_types_is_due(store: TaskStore) -> None:
    assert not await store.work_ready(["comfy"]) and not await store.work_ready(None)
    await enqueue(store, "i2v", run_at=datetime.now(UTC) + timedelta(hours=1))
    assert not await store.work_ready(["i2v"]) and not await store.work_ready(None)  # queued, not due
    await enqueue(store, "comfy")
    assert await store.work_ready(["comfy"]) and await store.work_ready(["s2v", "comfy"])
    assert await store.work_ready(None) and await store.work_ready([])
    assert not await store.work_ready(["s2v"]) and not await store.work_ready(["i2v"])
    w = await worker(store)
    await store.claim(w, ["comfy"], 1, LEASE)
    assert not await store.work_ready(["comfy"])  # running is not waiting


async def test_a_worker_id_live_on_another_host_is_refused_and_keeps_its_task(store: TaskStore) -> None:
    w = await worker(store)  # test-host
    t = await enqueue(store)
    await store.claim(w, None, 1, LEASE)
    with pytest.raises(WorkerIdInUse) as err:
        await store.register_worker(WorkerInfo(w, "other-host", 2, "test", ("comfy",)))
    assert "in use by host test-host" in str(err.value) and "WORKER_ID" in str(err.value)
    got = await store.get_task(t)
    assert got.status is TaskStatus.RUNNING and got.worker_id == w  # nothing requeued under the live worker

    # once that process is silent and its leases ran out, the id may move to another host
    await store.test_exec(f"update workers set last_heartbeat = '2000-01-01T00:00:00.000000Z' where id = '{w}'")
    await store.test_exec(f"update tasks set lease_expires_at = '2000-01-01T00:00:00.000000Z' where task_id = '{t}'")
    await store.register_worker(WorkerInfo(w, "other-host", 2, "test", ("comfy",)))
    got = await store.get_task(t)
    assert got.status is TaskStatus.QUEUED and "restarted" in (got.error or "")
