"""Completion webhooks, end to end on every store (postgres, sqlite, supabase through its stand-in): the outbox
written with the task's end, signed deliveries to a real HTTP receiver on 127.0.0.1, retries, refusals, replay,
crash recovery and concurrency. Signatures are checked with the ``standardwebhooks`` reference library.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from comfy_worker.config import Settings, load_settings
from comfy_worker.logs import configure_logging
from comfy_worker.models import NewTask, WorkerInfo
from comfy_worker.store.base import TaskStore
from comfy_worker.webhooks import WebhookDispatcher

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next status of ``plan`` (then 200), or
    holds it ``hang_s`` seconds first. ``hits`` records every request; ``changed`` is set on each."""

    plan: list[int] = field(default_factory=list)
    hang_s: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    started: int = 0
    url: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.started += 1
        self.changed.set()
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        status = self.plan.pop(0) if self.plan else 200
        self.hits.append(Hit(dict(request.headers), body, status))
        self.changed.set()
        return web.Response(status=status, text="ok" if status < 300 else f"nope {status} " + "x" * 500)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async def until() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    r.url = f"http://127.0.0.1:{port}/hook"
    yield r
    await runner.cleanup()


def hook_settings(receiver: Receiver | None = None, **env: str) -> Settings:
    base = {
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_POLL_S": "0.05",
        "WEBHOOK_TIMEOUT_S": "5",
        "WEBHOOK_BACKOFF_BASE_S": "0.01",
        "WEBHOOK_BACKOFF_CAP_S": "0.05",
        "LOG_FORMAT": "json",
    }
    if receiver is not None:
        base["WEBHOOK_URL"] = receiver.url
    return load_settings({**base, **env}, dotenv=None)


class Dispatchers:
    def __init__(self) -> None:
        self.running: list[asyncio.Task[None]] = []

    def start(self, settings: Settings, store: TaskStore, worker_id: str = "w1") -> WebhookDispatcher:
        d = WebhookDispatcher(settings, store, worker_id)
        self.running.append(asyncio.create_task(d.run()))
        return d

    async def stop(self) -> None:
        for t in self.running:
            t.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


@pytest.fixture
async def dispatchers() -> AsyncIterator[Dispatchers]:
    d = Dispatchers()
    yield d
    await d.stop()


async def worker(store: TaskStore, wid: str = "w1") -> str:
    await store.register_worker(WorkerInfo(wid, "test-host", 1, "test", ("comfy",), {}))
    return wid


async def run_one(store: TaskStore, wid: str, task_id: str) -> Any:
    [t] = await store.claim(wid, None, 1, 30)
    assert t.task_id == task_id
    return t


def verify(hit: Hit, secret: str = SECRET) -> dict[str, Any]:
    """The reference library's check of the signature (raises if it does not verify)."""
    return Webhook(secret).verify(hit.body, hit.headers)


async def outbox(store: TaskStore, task_id: str | None = None) -> list[dict[str, Any]]:
    return await store.webhook_deliveries(task_id, 1000)


async def wait_outbox(store: TaskStore, task_id: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:  # the outbox row is the observable outcome (the store has no event to wait on)
        rows = await outbox(store, task_id)
        if rows and rows[0]["state"] == state:
            return rows[0]
        if loop.time() > deadline:
            raise AssertionError(f"outbox of {task_id}: {rows}")
        await asyncio.sleep(0.05)


# --- one event per task end, on every store ----------------------------------------------------------------


async def test_one_event_per_task_end(store: TaskStore, receiver: Receiver, dispatchers: Dispatchers) -> None:
    await store.webhook_configure(True, None)
    w = await worker(store)
    done = (await store.enqueue(NewTask("comfy", {"n": 1}, priority=9))).task_id
    flaky = (await store.enqueue(NewTask("comfy", {"n": 2}, priority=8, max_attempts=2))).task_id
    child = (await store.enqueue(NewTask("comfy", {"n": 3}, depends_on=(flaky,)))).task_id
    dropped = (await store.enqueue(NewTask("comfy", {"n": 4}, priority=-5))).task_id

    t = await run_one(store, w, done)
    await store.complete(done, t.lease_token, {"outputs": [{"url": "https://x/o.png", "bytes": 3, "sha256": "ab"}]},
                         "https://x/o.png")
    t = await run_one(store, w, flaky)
    await store.fail(flaky, t.lease_token, "transient", retryable=True, backoff_base_s=0, backoff_cap_s=0)
    assert [r["event"] for r in await outbox(store, flaky)] == []  # a retry is no end
    t = await run_one(store, w, flaky)
    await store.fail(flaky, t.lease_token, "for good", {"why": "test"}, retryable=True)  # last attempt
    await store.cancel(dropped, "not needed")

    dispatchers.start(hook_settings(receiver), store)
    await receiver.wait(lambda: len(receiver.hits) >= 4)
    events = {verify(h)["data"]["task_id"]: verify(h) for h in receiver.hits}
    assert len(receiver.hits) == 4
    assert {k: v["type"] for k, v in events.items()} == {
        done: "task.completed", flaky: "task.failed", child: "task.failed", dropped: "task.cancelled"}
    data = events[done]["data"]
    assert data["status"] == "complete" and data["attempts"] == 1 and data["worker_id"] == w
    assert data["output_url"] == "https://x/o.png"
    assert data["result"]["outputs"] == [{"url": "https://x/o.png", "bytes": 3, "sha256": "ab"}]
    assert data["created_at"] and data["started_at"] and data["completed_at"]
    assert events[flaky]["data"]["error"] == "for good" and events[flaky]["data"]["attempts"] == 2
    assert events[child]["data"]["error_details"]["reason"] == "dependency_failed"
    assert events[dropped]["data"]["error"] == "not needed"
    for task_id in (done, flaky, child, dropped):
        row = await wait_outbox(store, task_id, "delivered")
        assert len(await outbox(store, task_id)) == 1
        assert list(row) == [  # the same view on every store
            "task_id", "event", "webhook_id", "state", "attempts", "next_try", "last_status", "last_error", "url",
            "claimed_by", "created_at", "delivered_at"]
        assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)
    # the body validates against the documented schema's required fields
    schema = json.loads((REPO / "docs" / "webhook-event.schema.json").read_text())
    for e in events.values():
        assert set(schema["required"]) <= set(e)
        assert set(schema["properties"]["data"]["required"]) <= set(e["data"])


async def test_a_task_failed_by_recovery_has_its_event(store: TaskStore) -> None:
    """requeue_stale's take-back with no attempts left ends the task: that is a task.failed too."""
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}, max_attempts=1))).task_id
    await store.claim(w, None, 1, 0.2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not (await store.requeue_stale(3600)).failed:  # the lease runs out in real time: the event under test
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    [row] = await outbox(store, task_id)
    assert (row["event"], row["state"]) == ("task.failed", "pending")


async def test_no_events_without_a_destination(store: TaskStore) -> None:
    """No WEBHOOK_URL in the fleet and no callback_url: nothing is written (the hot path stays as it was)."""
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    assert await outbox(store) == []


# --- retries, 410, replay ------------------------------------------------------------------------------------


async def test_500_three_times_then_200_is_one_delivery_of_four_attempts(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    receiver.plan = [500, 500, 500, 200]
    await store.webhook_configure(True, None)
    dispatchers.start(hook_settings(receiver), store)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    row = await wait_outbox(store, task_id, "delivered")
    assert (row["attempts"], row["last_status"]) == (4, 200)
    assert [h.status for h in receiver.hits] == [500, 500, 500, 200]
    assert len({h.headers["webhook-id"] for h in receiver.hits}) == 1
    assert receiver.hits[0].headers["webhook-id"] == row["webhook_id"]
    assert len(receiver.delivered()) == 1
    for h in receiver.hits:
        verify(h)  # each attempt is signed afresh (its own webhook-timestamp)


async def test_410_stops_at_once(store: TaskStore, receiver: Receiver, dispatchers: Dispatchers) -> None:
    receiver.plan = [410]
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    dispatchers.start(hook_settings(receiver), store)
    row = await wait_outbox(store, task_id, "failed")
    assert (row["attempts"], row["last_status"]) == (1, 410)
    assert "410 Gone" in row["last_error"] and "nope 410" in row["last_error"]  # with a body excerpt
    assert len(receiver.hits) == 1


async def test_giving_up_after_the_retry_window(store: TaskStore, receiver: Receiver, dispatchers: Dispatchers) -> None:
    receiver.plan = [503] * 1000
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    dispatchers.start(hook_settings(receiver, WEBHOOK_RETRY_FOR_S="0.3"), store)
    row = await wait_outbox(store, task_id, "failed")
    assert row["last_status"] == 503 and row["attempts"] >= 2
    assert row["last_error"].startswith(f"gave up after {row['attempts']} attempts")
    assert len(receiver.hits) == row["attempts"]


async def test_replay_sends_the_same_event_again(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    dispatchers.start(hook_settings(receiver), store)
    await receiver.wait(lambda: len(receiver.delivered()) == 1)
    await wait_outbox(store, task_id, "delivered")
    assert await store.replay_webhooks(task_id) == 1
    await receiver.wait(lambda: len(receiver.delivered()) == 2)
    first, second = receiver.delivered()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body


async def test_redirects_are_not_followed(store: TaskStore, dispatchers: Dispatchers) -> None:
    elsewhere: list[str] = []

    async def moved(_request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/elsewhere"})

    async def target(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", moved)
    app.router.add_post("/elsewhere", target)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
        await store.webhook_configure(True, None)
        w = await worker(store)
        task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
        t = await run_one(store, w, task_id)
        await store.complete(task_id, t.lease_token, {})
        dispatchers.start(load_settings({"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_POLL_S": "0.05",
                                         "WEBHOOK_BACKOFF_BASE_S": "60"}, dotenv=None), store)
        row = await wait_outbox(store, task_id, "pending")
        while row["last_status"] is None:
            row = await wait_outbox(store, task_id, "pending")
        assert row["last_status"] == 307 and "redirects are not followed" in row["last_error"]
        assert elsewhere == []
    finally:
        await runner.cleanup()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged during the test, as the worker would write it (JSON lines, secret masking on)."""
    import structlog

    buf = io.StringIO()
    configure_logging("debug", "json", stream=buf)
    yield buf
    structlog.reset_defaults()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def test_several_secrets_all_sign(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers, log_lines: io.StringIO
) -> None:
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    dispatchers.start(hook_settings(receiver, WEBHOOK_SECRET=f"{SECRET} {OLD_SECRET}"), store)
    await receiver.wait(lambda: len(receiver.delivered()) == 1)
    [hit] = receiver.delivered()
    assert len(hit.headers["webhook-signature"].split()) == 2
    verify(hit, SECRET)
    verify(hit, OLD_SECRET)  # a receiver still on the old secret accepts it during the rotation
    await wait_outbox(store, task_id, "delivered")  # reported after it was logged
    logged = log_lines.getvalue()
    assert "webhook_delivered" in logged  # the log was captured ...
    for secret in (SECRET, OLD_SECRET):  # ... and holds no secret
        assert secret not in logged and secret.removeprefix("whsec_") not in logged


# --- callback URLs and the URL policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "a cloud metadata address"),
        ("http://10.1.2.3/hook", "a private address"),
    ],
)
async def test_a_callback_url_to_a_private_address_is_refused_and_recorded(
    store: TaskStore, dispatchers: Dispatchers, url: str, reason: str
) -> None:
    w = await worker(store)
    # the callback URL is set in the INSERT, like priority
    await store.test_exec(  # type: ignore[attr-defined]
        f"insert into tasks (task_id, task_type, callback_url) values ('cb-1', 'comfy', '{url}')")
    t = await run_one(store, w, "cb-1")
    await store.complete("cb-1", t.lease_token, {})
    dispatchers.start(hook_settings(None, ALLOW_PRIVATE_URLS="true" if "169.254" in url else "false"), store)
    row = await wait_outbox(store, "cb-1", "failed")
    assert row["attempts"] == 1 and row["last_status"] is None
    assert reason in row["last_error"] and "refused" in row["last_error"]


async def test_a_callback_url_is_used_before_the_fleet_default(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    """No fleet WEBHOOK_URL: the task's own callback_url (allow-listed: it is on 127.0.0.1) gets the event."""
    w = await worker(store)
    await store.test_exec(  # type: ignore[attr-defined]
        f"insert into tasks (task_id, task_type, callback_url) values ('cb-2', 'comfy', '{receiver.url}?token=s3cr3t')")
    t = await run_one(store, w, "cb-2")
    await store.complete("cb-2", t.lease_token, {})
    dispatchers.start(hook_settings(None, WEBHOOK_URL_ALLOWLIST="127.0.0.1"), store)
    await receiver.wait(lambda: len(receiver.delivered()) == 1)
    assert verify(receiver.hits[0])["data"]["task_id"] == "cb-2"
    [row] = await outbox(store, "cb-2")
    assert "s3cr3t" not in row["url"]  # the view shows no query string


async def test_enqueue_takes_a_callback_url(store: TaskStore, receiver: Receiver, dispatchers: Dispatchers) -> None:
    w = await worker(store)
    task = await store.enqueue(NewTask("comfy", {"p": 1}, callback_url=receiver.url))
    assert task.params == {"p": 1}  # params stay the job description
    t = await run_one(store, w, task.task_id)
    await store.complete(task.task_id, t.lease_token, {})
    dispatchers.start(hook_settings(None, WEBHOOK_URL_ALLOWLIST="127.0.0.1"), store)
    await receiver.wait(lambda: len(receiver.delivered()) == 1)
    assert verify(receiver.hits[0])["data"]["task_id"] == task.task_id


async def test_drain_sends_the_last_events_before_shutdown(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    """What the daemon does after its last task (an --exit-when-idle pod): the events are out before it exits,
    not left for the next worker. A long poll interval shows the wake-up, not the poll, sent them."""
    await store.webhook_configure(True, None)
    d = dispatchers.start(hook_settings(receiver, WEBHOOK_POLL_S="60"), store)
    w = await worker(store)
    ids = [(await store.enqueue(NewTask("comfy", {"i": i}))).task_id for i in range(3)]
    await asyncio.wait_for(d.ready.wait(), 10)
    for task_id in ids:
        t = await run_one(store, w, task_id)
        await store.complete(task_id, t.lease_token, {})
    assert await d.drain(10) is True
    assert sorted(verify(h)["data"]["task_id"] for h in receiver.delivered()) == sorted(ids)
    assert [r["state"] for r in await outbox(store)] == ["delivered"] * 3


# --- a hanging receiver is not in the tasks' way ---------------------------------------------------------------


async def test_a_hanging_receiver_changes_no_task_timeline(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    """Every delivery slot held by a receiver that does not answer: tasks are claimed and completed all the
    same, every one of them while the first POST is still open."""
    receiver.hang_s = 30
    await store.webhook_configure(True, None)
    dispatchers.start(hook_settings(receiver, WEBHOOK_CONCURRENCY="2", WEBHOOK_TIMEOUT_S="20"), store)
    w = await worker(store)
    ids = [(await store.enqueue(NewTask("comfy", {"i": i}))).task_id for i in range(12)]
    t = await store.claim(w, None, 1, 30)
    await store.complete(t[0].task_id, t[0].lease_token, {})
    await receiver.wait(lambda: receiver.started >= 1)  # a delivery is now hanging
    for _ in ids[1:]:
        [t1] = await store.claim(w, None, 1, 30)
        await store.complete(t1.task_id, t1.lease_token, {})
    assert receiver.hits == []  # no POST has been answered yet: all 12 tasks ended while it hung
    assert [(await store.get_task(i)).status.value for i in ids] == ["complete"] * len(ids)
    assert receiver.started <= 2  # bounded concurrency


# --- crash and concurrency -----------------------------------------------------------------------------------

_KILLED_WORKER = """
import asyncio, os, signal, sys
from comfy_worker.models import NewTask, WorkerInfo
from comfy_worker.store.postgres import PostgresStore
from comfy_worker.store.sqlite import SqliteStore

async def main(kind, where):
    store = PostgresStore(where, listen=False) if kind == "postgres" else SqliteStore(where)
    await store.connect()
    await store.register_worker(WorkerInfo("doomed", "h", os.getpid(), "t", ("comfy",), {}))
    [t] = await store.claim("doomed", None, 1, 30)
    await store.complete(t.task_id, t.lease_token, {"outputs": []})
    os.kill(os.getpid(), signal.SIGKILL)  # right after complete_task committed: its event was never sent

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_a_worker_killed_right_after_completing_still_has_its_event_delivered(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    from tests.integration.conftest import make_store

    store, _ = await make_store(kind, request, tmp_path)
    try:
        await store.webhook_configure(True, None)
        task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
        where = request.getfixturevalue("pg_dsn") if kind == "postgres" else str(tmp_path / "queue.db")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _KILLED_WORKER, kind, where, cwd=REPO)
        assert await proc.wait() == -signal.SIGKILL
        assert (await store.get_task(task_id)).status.value == "complete"
        dispatchers.start(hook_settings(receiver), store, "survivor")
        await receiver.wait(lambda: len(receiver.delivered()) == 1)
        assert verify(receiver.hits[0])["data"]["task_id"] == task_id
        row = await wait_outbox(store, task_id, "delivered")
        assert row["claimed_by"] == "survivor"
    finally:
        await dispatchers.stop()
        await store.close()


async def test_a_delivery_whose_worker_died_mid_post_is_taken_over(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    """A claimed delivery is leased: when its deliverer vanishes, the lease runs out and another sends it."""
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    await store.complete(task_id, t.lease_token, {})
    [claimed] = await store.claim_webhooks("dead", 1, 0.3, True)  # ... and never reports
    assert await store.claim_webhooks("other", 1, 30, True) == []  # leased
    dispatchers.start(hook_settings(receiver), store, "other")
    await receiver.wait(lambda: len(receiver.delivered()) == 1)
    assert receiver.hits[0].headers["webhook-id"] == claimed.webhook_id
    row = await wait_outbox(store, task_id, "delivered")
    assert (row["attempts"], row["claimed_by"]) == (2, "other")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_100_tasks_3_workers_100_events_none_delivered_twice(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    from tests.integration.conftest import make_store

    stores = [(await make_store(kind, request, tmp_path))[0] for _ in range(3)]
    try:
        await stores[0].webhook_configure(True, None)
        ids = {(await stores[0].enqueue(NewTask("comfy", {"i": i}))).task_id for i in range(100)}
        settings = hook_settings(receiver, WEBHOOK_CONCURRENCY="3")

        async def work(store: TaskStore, wid: str) -> None:
            await worker(store, wid)
            dispatchers.start(settings, store, wid)
            while tasks := await store.claim(wid, None, 1, 30):
                await store.complete(tasks[0].task_id, tasks[0].lease_token, {"by": wid})

        await asyncio.gather(*(work(s, f"w{i}") for i, s in enumerate(stores)))
        await receiver.wait(lambda: len(receiver.delivered()) >= 100, timeout=60)
        for _ in range(400):  # the reports land just after the receiver's answers
            rows = await outbox(stores[0])
            if all(r["state"] != "delivering" for r in rows):
                break
            await asyncio.sleep(0.05)
        assert len(rows) == 100 and {r["task_id"] for r in rows} == ids
        assert all(r["state"] == "delivered" and r["attempts"] == 1 for r in rows)
        ids_seen = [h.headers["webhook-id"] for h in receiver.delivered()]
        assert len(ids_seen) == len(set(ids_seen)) == 100  # none delivered twice
        assert {verify(h)["data"]["task_id"] for h in receiver.delivered()} == ids
        assert len({r["claimed_by"] for r in rows}) >= 2  # the work was shared
    finally:
        await dispatchers.stop()
        for s in stores:
            await s.close()


async def test_progress_events_are_opt_in_and_arrive_in_order(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    await store.webhook_configure(True, ["task.progress", "task.completed"])
    w = await worker(store)
    task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
    t = await run_one(store, w, task_id)
    for step in (1, 2):
        await store.update_progress(task_id, t.lease_token, {"step": step})
    await store.complete(task_id, t.lease_token, {})
    dispatchers.start(hook_settings(receiver, WEBHOOK_EVENTS="task.progress,task.completed"), store)
    await receiver.wait(lambda: len(receiver.delivered()) == 3)
    got = [(verify(h)["type"], verify(h)["data"]["progress"]) for h in receiver.hits]
    assert got == [("task.progress", {"step": 1}), ("task.progress", {"step": 2}), ("task.completed", {"step": 2})]


# --- start-up ------------------------------------------------------------------------------------------------


def test_a_bad_webhook_secret_stops_the_worker_at_start_naming_it(tmp_path: Path) -> None:
    bad = "whsec_this-is-not-base64!!"
    env = {**os.environ, "WEBHOOK_SECRET": bad, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    out = subprocess.run(
        [sys.executable, "-m", "comfy_worker", "--worker-id", "w"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "WEBHOOK_SECRET" in out.stderr + out.stdout
    assert bad not in out.stderr + out.stdout and "this-is-not" not in out.stderr + out.stdout


async def test_cli_lists_and_replays(tmp_path: Path) -> None:
    from comfy_worker.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "q.db")
    await store.connect()
    try:
        await store.migrate()
        await store.webhook_configure(True, None)
        w = await worker(store)
        task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
        t = await run_one(store, w, task_id)
        await store.complete(task_id, t.lease_token, {})
        [e] = await store.claim_webhooks("w1", 1, 30, True)
        await store.report_webhook(e.id, e.lease_token or "", "failed", 410, "gone")
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}

        def cli(*args: str) -> str:
            out = subprocess.run([sys.executable, "-m", "comfy_worker", "webhooks", *args], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout

        listed = cli("list", task_id)
        assert task_id in listed and "task.completed" in listed and "failed" in listed and "last=410" in listed
        assert "1 event(s)" in cli("replay", task_id)
        [row] = await outbox(store, task_id)
        assert (row["state"], row["webhook_id"]) == ("pending", e.webhook_id)
    finally:
        await store.close()


async def test_the_readme_receiver_verifies_our_signatures(
    store: TaskStore, tmp_path: Path, dispatchers: Dispatchers
) -> None:
    """The 15-line receiver of README "Webhooks", run as written (on another port): it accepts our deliveries
    and refuses a forged one."""
    import re
    import socket

    import httpx

    readme = (REPO / "README.md").read_text()
    code = re.search(r"in 15 lines of Python:\n\n```python\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 15
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "receiver.py"
    script.write_text(code.replace('("0.0.0.0", 8000)', f'("127.0.0.1", {port})'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", str(script), env={**os.environ, "WEBHOOK_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient() as client:
            for _ in range(100):  # until it listens
                try:
                    forged = await client.post(url, content=b"{}", headers={
                        "webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        assert forged.status_code == 401
        await store.webhook_configure(True, None)
        w = await worker(store)
        task_id = (await store.enqueue(NewTask("comfy", {}))).task_id
        t = await run_one(store, w, task_id)
        await store.complete(task_id, t.lease_token, {}, "https://x/out.mp4")
        dispatchers.start(load_settings({"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_POLL_S": "0.05"},
                                        dotenv=None), store)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().split() == ["task.completed", task_id, "https://x/out.mp4"]
        row = await wait_outbox(store, task_id, "delivered")
        assert row["last_status"] == 204
    finally:
        proc.kill()
        await proc.wait()


async def test_without_the_webhook_schema_the_loop_says_so_and_stops(store: TaskStore, receiver: Receiver) -> None:
    """A database without sql/008 (a Supabase project that skipped it): one error naming the fix, no retry storm,
    and the worker goes on without webhooks."""
    await store.test_exec(  # type: ignore[attr-defined]
        "drop function webhook_configure(boolean, text[]); "
        "drop function claim_webhook_events(text, integer, double precision, boolean)"
        if store.name != "sqlite" else "drop table webhook_events"
    )
    d = WebhookDispatcher(hook_settings(receiver), store, "w1")
    await asyncio.wait_for(d.run(), 10)  # returns: no exception out of the daemon's background task
    assert not d.ready.is_set()


# --- after review (sql/009_webhooks_review.sql) ---------------------------------------------------------------


async def complete_new(store: TaskStore, wid: str, task: NewTask) -> str:
    task_id = (await store.enqueue(task)).task_id
    t = await run_one(store, wid, task_id)
    await store.complete(task_id, t.lease_token, {"outputs": []}, "https://x/o.png")
    return task_id


async def test_a_callback_url_is_opened_only_by_webhook_url_allowlist(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    """The operator's WEBHOOK_URL is trusted as configured (here a loopback address); a task's callback_url is
    not: neither the inputs' settings (ALLOW_PRIVATE_URLS, INPUT_URL_ALLOWLIST) nor sharing WEBHOOK_URL's host
    let a task author make the worker POST to a private address, another port or another path of it."""
    await store.webhook_configure(True, None)
    w = await worker(store)
    origin = receiver.url.removesuffix("/hook")
    cases = {"default": None, "same-url": receiver.url, "other-path": f"{origin}/admin",
             "other-port": "http://127.0.0.1:9/hook", "metadata": "http://169.254.169.254/latest/meta-data"}
    ids = {name: await complete_new(store, w, NewTask("comfy", {"case": name}, callback_url=url))
           for name, url in cases.items()}
    inputs_open = {"ALLOW_PRIVATE_URLS": "true", "INPUT_URL_ALLOWLIST": "127.0.0.1,169.254.169.254"}
    dispatchers.start(hook_settings(receiver, **inputs_open), store)
    for name in ("default", "same-url"):
        await wait_outbox(store, ids[name], "delivered")
    for name in ("other-path", "other-port", "metadata"):
        row = await wait_outbox(store, ids[name], "failed")
        assert row["attempts"] == 1 and row["last_status"] is None, row
        assert "refused" in row["last_error"] and "add the host to WEBHOOK_URL_ALLOWLIST" in row["last_error"], row
        assert "ALLOW_PRIVATE_URLS" not in row["last_error"]  # it does not apply to callbacks: not offered
    assert sorted(verify(h)["data"]["task_id"] for h in receiver.hits) == sorted([ids["default"], ids["same-url"]])


async def test_clearing_webhook_url_stops_default_deliveries_for_new_events(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    w = await worker(store)
    d = dispatchers.start(hook_settings(receiver, WEBHOOK_EVENTS="task.completed,task.cancelled"), store)
    await asyncio.wait_for(d.ready.wait(), 10)
    before = await complete_new(store, w, NewTask("comfy", {}))
    await wait_outbox(store, before, "delivered")
    await dispatchers.stop()

    # the fleet restarts with WEBHOOK_URL cleared; the secret stays (tasks' own callback_urls)
    d = dispatchers.start(hook_settings(None, WEBHOOK_URL=""), store)
    await asyncio.wait_for(d.ready.wait(), 10)
    after = await complete_new(store, w, NewTask("comfy", {}))
    assert await outbox(store, after) == []  # no event: nobody would send it
    own = await complete_new(store, w, NewTask("comfy", {}, callback_url=receiver.url))
    assert [r["event"] for r in await outbox(store, own)] == ["task.completed"]
    # a worker without WEBHOOK_EVENTS keeps the fleet's: task.failed is still not wanted
    failing = (await store.enqueue(NewTask("comfy", {}, callback_url=receiver.url, max_attempts=1))).task_id
    t = await run_one(store, w, failing)
    await store.fail(failing, t.lease_token, "for good", retryable=False)
    assert await outbox(store, failing) == []
    await dispatchers.stop()

    # webhooks removed altogether (no WEBHOOK_URL, no WEBHOOK_SECRET): the same
    await store.webhook_configure(True, None)
    bare = WebhookDispatcher(load_settings({}, dotenv=None), store, "w2")
    await asyncio.wait_for(bare.run(), 10)
    assert not bare.enabled
    gone = await complete_new(store, w, NewTask("comfy", {}))
    assert await outbox(store, gone) == []


async def test_replay_starts_each_delivery_afresh(store: TaskStore) -> None:
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = await complete_new(store, w, NewTask("comfy", {}))
    for outcome, status in (("retry", 503), ("retry", 503), ("failed", 410)):
        [e] = await store.claim_webhooks("w1", 1, 30, True)
        await store.report_webhook(e.id, e.lease_token or "", outcome, status, f"answered {status}", 0, 0, 3600)
    [row] = await outbox(store, task_id)
    assert (row["state"], row["attempts"], row["last_status"]) == ("failed", 3, 410)

    assert await store.replay_webhooks(task_id) == 1
    [row] = await outbox(store, task_id)
    assert (row["state"], row["attempts"], row["last_status"], row["last_error"], row["claimed_by"]) == (
        "pending", 0, None, None, None)
    assert row["webhook_id"] == e.webhook_id  # the receiver's idempotency key is kept
    [again] = await store.claim_webhooks("w1", 1, 30, True)
    assert again.attempts == 1  # its first attempt, with the backoff and retry window of a first attempt
    after = await store.report_webhook(again.id, again.lease_token or "", "retry", 503, "still down", 0, 0, 3600)
    assert (after.state, after.attempts) == ("pending", 1)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pa%40ss@hooks.example.com:8443/a/b?token=x#frag",
        "http://u@h.example/p@q",
        "https://a:b@h.example#f?x",
        "https://h.example/x#f",
        "http://h.example",
        "https://h.example/x?sig=1&t=2",
    ],
)
async def test_the_view_shows_a_url_as_the_logs_do(store: TaskStore, url: str) -> None:
    """No credentials, query or fragment, the same text on every store as urlpolicy.display_url writes."""
    from comfy_worker.urlpolicy import display_url

    await store.test_exec(  # type: ignore[attr-defined]
        f"insert into tasks (task_id, task_type, callback_url) values ('u1', 'comfy', '{url}')")
    await store.test_exec("update tasks set status = 'cancelled' where task_id = 'u1'")  # type: ignore[attr-defined]
    [row] = await outbox(store, "u1")
    assert row["url"] == display_url(url)


async def test_timestamps_are_rfc3339_utc_with_microseconds_on_every_store(
    store: TaskStore, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    """The body's timestamp and the data's times, in the form (and pattern) docs/webhook-event.schema.json gives."""
    import re

    schema = json.loads((REPO / "docs" / "webhook-event.schema.json").read_text())
    pattern = re.compile(schema["$defs"]["timestamp"]["pattern"])
    await store.webhook_configure(True, None)
    w = await worker(store)
    done = await complete_new(store, w, NewTask("comfy", {}))
    never_ran = (await store.enqueue(NewTask("comfy", {}))).task_id
    await store.cancel(never_ran, "not needed")
    dispatchers.start(hook_settings(receiver), store)
    await receiver.wait(lambda: len(receiver.delivered()) == 2)
    bodies = {verify(h)["data"]["task_id"]: verify(h) for h in receiver.delivered()}
    for task_id, body in bodies.items():
        assert pattern.match(body["timestamp"]), body["timestamp"]
        times = {k: body["data"][k] for k in ("created_at", "started_at", "completed_at")}
        expected_null = {"started_at"} if task_id == never_ran else set()
        assert {k for k, v in times.items() if v is None} == expected_null, times
        for v in times.values():
            assert v is None or pattern.match(v), times
    data = bodies[done]["data"]
    assert data["completed_at"] >= data["started_at"] >= data["created_at"]  # the fixed width sorts as text


async def test_a_replayed_event_carries_the_data_the_trigger_wrote(store: TaskStore) -> None:
    """One definition of the body's data per store (PostgreSQL's _cw_webhook_data, SQLite's view of that name),
    read by the trigger and by replay alike."""
    await store.webhook_configure(True, None)
    w = await worker(store)
    task_id = await complete_new(store, w, NewTask("comfy", {"p": 1}, callback_url="https://hooks.example/x"))
    [first] = await store.claim_webhooks("w1", 1, 30, True)
    await store.report_webhook(first.id, first.lease_token or "", "delivered", 200)
    await store.test_exec(f"delete from webhook_events where task_id = '{task_id}'")  # type: ignore[attr-defined]
    assert await store.replay_webhooks(task_id) == 1  # written afresh by replay
    [second] = await store.claim_webhooks("w1", 1, 30, True)
    assert (second.event_type, second.url, second.payload) == (first.event_type, first.url, first.payload)
    assert second.webhook_id != first.webhook_id


async def test_a_reapplied_008_leaves_009_in_force(store: TaskStore) -> None:
    """The migration runners re-apply a changed file and every later one (SQLite did only the file): 008's
    re-created triggers and view must not replace 009's."""
    if store.name == "supabase":
        pytest.skip("the Supabase store does not migrate (its SQL is run in the SQL editor)")
    await store.test_exec(  # type: ignore[attr-defined]
        "update comfy_worker_migrations set checksum = 'old' where version = '008_webhooks'")
    assert await store.migrate() == ["008_webhooks", "009_webhooks_review"]  # type: ignore[attr-defined]
    await store.webhook_configure(True, None)
    await store.test_exec(  # type: ignore[attr-defined]
        "insert into tasks (task_id, task_type, callback_url) values ('u1', 'comfy', 'https://u:p@h.example/x')")
    await store.test_exec("update tasks set status = 'cancelled' where task_id = 'u1'")  # type: ignore[attr-defined]
    [row] = await outbox(store, "u1")
    assert row["url"] == "https://h.example/x"
