"""SupabaseStore specifics: the request shape PostgREST expects, error mapping, polling, failure modes.

The queue rules themselves are in test_store_conformance.py. Here supabase-py talks HTTP to
tests/standins/postgrest.py, which runs the real SQL functions in a fresh migrated database (``pg_dsn``).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from postgrest.exceptions import APIError
from supabase import AsyncClientOptions, acreate_client

from comfy_worker.errors import (
    InvalidArgument,
    LeaseLost,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    WorkerNotFound,
    is_retryable,
)
from comfy_worker.models import NewTask, WorkerInfo
from comfy_worker.store.supabase import SupabaseStore
from tests.standins.postgrest import PostgrestStandin, mint_key

KEY = mint_key("service_role")
WRONG_TOKEN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def standin(pg_dsn: str) -> AsyncIterator[PostgrestStandin]:
    s = PostgrestStandin(pg_dsn, KEY)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def store(standin: PostgrestStandin) -> AsyncIterator[SupabaseStore]:
    s = SupabaseStore(standin.base_url, KEY, poll_interval=0.05)
    await s.connect()
    yield s
    await s.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def exercise_every_method(store: SupabaseStore) -> None:
    await store.register_worker(WorkerInfo("w1", "host", 42, "1.0", ("comfy",), {"gpu": "A100"}))
    first = (await store.enqueue(NewTask("comfy", {"workflow": {}}, run_at=datetime.now(UTC)))).task_id
    await store.enqueue(NewTask("comfy", {}, depends_on=(first,), dedupe_key="d", priority=1, max_attempts=2))
    [task] = await store.claim("w1", ["comfy"], 1, 30)
    await store.update_progress(task.task_id, task.lease_token or "", {"percent": 10}, {"step": 1})
    await store.heartbeat("w1", 30, {"vram": 1}, [task.task_id])
    await store.webhook_configure(True, ["task.completed"])
    await store.complete(task.task_id, task.lease_token or "", {"ok": True}, "https://x/y.mp4")
    [event] = await store.claim_webhooks("w1", 4, 30, True)
    await store.report_webhook(event.id, event.lease_token or "", "delivered", 200)
    await store.replay_webhooks(task.task_id)
    await store.webhook_deliveries(task.task_id)
    [second] = await store.claim("w1", None, 1, 30)
    await store.fail(
        second.task_id,
        second.lease_token or "",
        "boom",
        {"why": 1},
        retryable=True,
        backoff_base_s=0,
        backoff_cap_s=0,
    )
    [second] = await store.claim("w1", None, 1, 30)
    await store.release(second.task_id, second.lease_token or "")
    await store.cancel(second.task_id, "no longer needed")
    await store.get_task(first)
    await store.set_worker_status("w1", "draining", {"note": "x"})
    await store.requeue_stale(90)
    await store.fleet_snapshot()
    await store.deregister_worker("w1")


# --- request shape ---------------------------------------------------------------------------------------


async def test_every_call_is_a_post_rpc_with_the_headers_postgrest_expects(
    store: SupabaseStore, standin: PostgrestStandin
) -> None:
    standin.requests.clear()
    await exercise_every_method(store)
    called = {r.path.rsplit("/", 1)[1] for r in standin.requests}
    assert called == {
        "register_worker",
        "deregister_worker",
        "set_worker_status",
        "heartbeat",
        "enqueue_task",
        "get_task",
        "claim_tasks",
        "update_progress",
        "complete_task",
        "fail_task",
        "release_task",
        "cancel_task",
        "requeue_stale",
        "fleet_snapshot",
        "webhook_configure",
        "claim_webhook_events",
        "report_webhook_event",
        "replay_webhook_events",
        "list_webhook_deliveries",
    }
    for r in standin.requests:
        assert r.method == "POST" and r.path.startswith("/rest/v1/rpc/")
        assert r.headers["apikey"] == KEY
        assert r.headers["authorization"] == f"Bearer {KEY}"
        assert r.headers["content-type"] == "application/json"
        assert r.headers["accept"] in ("*/*", "application/json")  # supabase-py sends httpx's */*: JSON
        assert r.headers["content-profile"] == "public" and r.headers["accept-profile"] == "public"
        assert "prefer" not in r.headers  # rpc needs no preference: PostgREST's defaults are what we want
        assert isinstance(r.json, dict)


async def test_bodies_name_exactly_the_sql_parameters(
    store: SupabaseStore, standin: PostgrestStandin, pg_conn: asyncpg.Connection
) -> None:
    standin.requests.clear()
    await exercise_every_method(store)
    params = {
        r["proname"]: set(r["names"] or ())
        for r in await pg_conn.fetch(
            "select proname, proargnames as names from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and proname not like '\\_cw%' and prokind = 'f'"
        )
    }
    # claim_tasks' p_preference (sql/006) is sent only with a preference, so a schema from before 006 still works
    params["claim_tasks"] -= {"p_preference"}
    params["enqueue_task"] -= {"p_callback_url"}  # likewise (sql/008): sent only with a callback_url
    for r in standin.requests:
        fn = r.path.rsplit("/", 1)[1]
        # every parameter is sent (an explicit null means null, as in the asyncpg store): no hidden defaults
        assert set(r.json) == params[fn], fn
    enqueue = standin.calls("enqueue_task")[0].json
    assert enqueue["p_params"] == {"workflow": {}}  # a JSON object, not a string
    assert datetime.fromisoformat(enqueue["p_run_at"]).tzinfo is not None
    claim = standin.calls("claim_tasks")[0].json
    assert claim == {"p_worker_id": "w1", "p_task_types": ["comfy"], "p_n": 1, "p_lease_seconds": 30.0}
    heartbeat = standin.calls("heartbeat")[0].json
    assert heartbeat["p_task_ids"] and heartbeat["p_metadata"] == {"vram": 1}


async def test_naive_run_at_is_taken_as_utc(store: SupabaseStore, standin: PostgrestStandin) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5)
    task = await store.enqueue(NewTask("comfy", {}, run_at=when))
    assert standin.calls("enqueue_task")[-1].json["p_run_at"] == "2030-01-02T03:04:05+00:00"
    assert task.run_at == when.replace(tzinfo=UTC)


async def test_values_that_are_not_json_fail_before_sending(store: SupabaseStore, standin: PostgrestStandin) -> None:
    before = len(standin.requests)
    with pytest.raises(InvalidArgument, match="JSON"):
        await store.enqueue(NewTask("comfy", {"x": math.nan}))
    assert len(standin.requests) == before


# --- what PostgREST answers (the stand-in's fidelity, seen through the real client) ------------------------


async def test_response_shapes_object_array_value_and_204(store: SupabaseStore, standin: PostgrestStandin) -> None:
    await store.register_worker(WorkerInfo("w1", "h", 1, "v"))
    t = await store.enqueue(NewTask("comfy", {}))
    headers = {"apikey": KEY, "Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"{standin.base_url}/rest/v1/rpc") as http:
        one = await http.post("/get_task", json={"p_task_id": t.task_id}, headers=headers)
        assert one.status_code == 200 and isinstance(one.json(), dict) and one.json()["task_id"] == t.task_id
        many = await http.post("/claim_tasks", json={"p_worker_id": "w1", "p_n": 5}, headers=headers)
        assert many.status_code == 200 and [r["task_id"] for r in many.json()] == [t.task_id]
        none = await http.post("/claim_tasks", json={"p_worker_id": "w1"}, headers=headers)  # defaults apply
        assert none.json() == []
        value = await http.post("/heartbeat", json={"p_worker_id": "w1"}, headers=headers)
        assert value.json() == {"worker_status": "busy", "cancelled": [], "lost": []}
        void = await http.post(
            "/update_progress",
            json={
                "p_task_id": t.task_id,
                "p_lease_token": many.json()[0]["lease_token"],
                "p_progress": {"p": 1},
            },
            headers=headers,
        )
        assert void.status_code == 204 and void.content == b""


async def test_raise_comes_back_as_400_with_code_message_details_hint(
    store: SupabaseStore, standin: PostgrestStandin
) -> None:
    await store.register_worker(WorkerInfo("w1", "h", 1, "v"))
    t = await store.enqueue(NewTask("comfy", {}))
    [task] = await store.claim("w1", None, 1, 30)
    # the raw HTTP answer
    async with httpx.AsyncClient() as http:
        raw = await http.post(
            f"{standin.base_url}/rest/v1/rpc/complete_task",
            json={"p_task_id": t.task_id, "p_lease_token": WRONG_TOKEN},
            headers={"apikey": KEY, "Authorization": f"Bearer {KEY}"},
        )
    assert raw.status_code == 400
    body = raw.json()
    assert set(body) == {"code", "message", "details", "hint"} and body["code"] == "CW001"
    # supabase-py's APIError carries the four fields
    async with httpx.AsyncClient() as http:
        options = AsyncClientOptions(auto_refresh_token=False, httpx_client=http)
        client = await acreate_client(standin.base_url, KEY, options)
        with pytest.raises(APIError) as api:
            await client.rpc("complete_task", {"p_task_id": t.task_id, "p_lease_token": WRONG_TOKEN}).execute()
    assert api.value.code == "CW001"
    assert (
        api.value.message == f"complete_task: report for task {t.task_id} rejected: "
        "its lease is now held by worker w1 (ours expired and the task was requeued)"
    )
    assert '"status" : "running"' in (api.value.details or "")
    assert api.value.hint == "stop working on this task; nothing more is recorded for it by this worker"
    # and the store maps it by code, keeping what the server said
    with pytest.raises(LeaseLost) as lost:
        await store.complete(t.task_id, WRONG_TOKEN, {}, None)
    assert str(lost.value) == api.value.message
    assert lost.value.details["sqlstate"] == "CW001" and lost.value.details["hint"] == api.value.hint
    assert task.task_id in lost.value.details["detail"]


@pytest.mark.parametrize(
    ("call", "exc", "code"),
    [
        (lambda s: s.get_task("nope"), TaskNotFound, "CW002"),
        (lambda s: s.heartbeat("ghost", 30), WorkerNotFound, "CW003"),
        (lambda s: s.claim("w1", None, 1, -1), InvalidArgument, "CW004"),
        (lambda s: s.set_worker_status("w1", "on-holiday"), InvalidArgument, "23514"),
        (lambda s: s.complete("t", "not-a-uuid", {}, None), InvalidArgument, "22P02"),
    ],
)
async def test_sqlstates_map_to_our_exceptions(store: SupabaseStore, call, exc, code) -> None:  # type: ignore[no-untyped-def]
    await store.register_worker(WorkerInfo("w1", "h", 1, "v"))
    with pytest.raises(exc) as info:
        await call(store)
    assert type(info.value) is exc and info.value.details["sqlstate"] == code
    assert not is_retryable(info.value)


async def test_unknown_function_is_pgrst202_and_schema_missing(store: SupabaseStore, standin: PostgrestStandin) -> None:
    async with httpx.AsyncClient() as http:
        raw = await http.post(
            f"{standin.base_url}/rest/v1/rpc/claim_tasks",
            json={"p_bogus": 1},
            headers={"apikey": KEY, "Authorization": f"Bearer {KEY}"},
        )
    assert raw.status_code == 404
    assert raw.json() == {
        "code": "PGRST202",
        "hint": None,
        "message": "Could not find the function public.claim_tasks(p_bogus) in the schema cache",
        "details": "Searched for the function public.claim_tasks with parameter p_bogus or with a single "
        "unnamed json/jsonb parameter, but no matches were found in the schema cache.",
    }
    with pytest.raises(SchemaMissing, match="SQL editor"):
        await store._rpc("claim_tasks", {"p_bogus": 1})


# --- the schema ------------------------------------------------------------------------------------------


async def test_migrate_on_a_migrated_project_applies_nothing(store: SupabaseStore) -> None:
    assert await store.migrate() == []


async def test_schema_missing_says_how_to_install_it(empty_pg_dsn: str) -> None:
    standin = PostgrestStandin(empty_pg_dsn, KEY)
    store = SupabaseStore(await standin.start(), KEY, poll_interval=0.05)
    try:
        await store.connect()  # reachable and the key is accepted: connecting works
        with pytest.raises(SchemaMissing) as info:
            await store.migrate()
        message = str(info.value)
        for fix in (
            "Supabase SQL editor",
            "001_tables.sql",
            "002_functions.sql",
            "003_views.sql",
            "`comfy-worker migrate`",
            "DATABASE_URL",
            "reload schema",
        ):
            assert fix in message
        assert info.value.details["sqlstate"] == "PGRST202"
        with pytest.raises(SchemaMissing):
            await store.claim("w1", None, 1, 30)
    finally:
        await store.close()
        await standin.stop()


async def test_a_schema_that_is_not_exposed(standin: PostgrestStandin) -> None:
    store = SupabaseStore(standin.base_url, KEY, schema="queue")
    await store.connect()
    try:
        with pytest.raises(SchemaMissing, match="Exposed schemas"):
            await store.get_task("x")
        assert standin.requests[-1].headers["content-profile"] == "queue"
    finally:
        await store.close()


# --- unreachable, down, refused ----------------------------------------------------------------------------


async def test_unreachable_url_is_store_unavailable() -> None:
    store = SupabaseStore(f"http://127.0.0.1:{free_port()}", KEY, connect_timeout=2)
    with pytest.raises(StoreUnavailable, match="unreachable") as info:
        await store.connect()
    assert is_retryable(info.value)
    with pytest.raises(StoreUnavailable, match="not connected"):
        await store.get_task("x")  # connect() failed: nothing half-open is left behind


async def test_server_gone_mid_session_is_store_unavailable(store: SupabaseStore, standin: PostgrestStandin) -> None:
    await store.fleet_snapshot()
    await standin.stop()
    with pytest.raises(StoreUnavailable):
        await store.fleet_snapshot()


async def test_database_down_behind_postgrest_is_store_unavailable() -> None:
    standin = PostgrestStandin(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", KEY)
    store = SupabaseStore(await standin.start(), KEY)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.connect()
        assert info.value.details["http_status"] == 503 and info.value.details["code"] == "PGRST001"
    finally:
        await store.close()
        await standin.stop()


@pytest.mark.parametrize("status", [502, 503, 504, 429])
async def test_proxy_errors_are_store_unavailable(store: SupabaseStore, standin: PostgrestStandin, status: int) -> None:
    standin.fail_next(status, "<html><body>upstream trouble</body></html>")
    with pytest.raises(StoreUnavailable, match=f"HTTP {status}"):
        await store.claim("w1", None, 1, 30)
    assert (await store.fleet_snapshot())["queue"] == []  # the next call goes through


async def test_a_non_postgrest_url_names_supabase_url(store: SupabaseStore, standin: PostgrestStandin) -> None:
    standin.fail_next(404, "<html>Not Found</html>")
    with pytest.raises(StoreError, match="SUPABASE_URL") as info:
        await store.get_task("x")
    assert not is_retryable(info.value)


async def test_a_rolled_back_call_is_transient_but_an_http_404_is_not_mistaken_for_one(
    store: SupabaseStore, standin: PostgrestStandin
) -> None:
    # PostgREST answers a deadlock (SQLSTATE 40P01) with its JSON error; "404" also starts with "40"
    body = json.dumps({"code": "40P01", "message": "deadlock detected", "details": None, "hint": None})
    standin.fail_next(409, body, "application/json")
    with pytest.raises(StoreError) as info:
        await store.get_task("x")
    assert is_retryable(info.value) and info.value.details["sqlstate"] == "40P01"
    standin.fail_next(404, "<html>Not Found</html>")
    with pytest.raises(StoreError, match="SUPABASE_URL") as info:
        await store.get_task("x")
    assert not is_retryable(info.value)


async def test_wrong_key_is_refused_at_connect(standin: PostgrestStandin) -> None:
    store = SupabaseStore(standin.base_url, mint_key("service_role", ref="another-project"))
    with pytest.raises(StoreError, match="SUPABASE_SERVICE_ROLE_KEY") as info:
        await store.connect()
    assert "Invalid API key" in str(info.value) and info.value.details["http_status"] == 401
    assert not is_retryable(info.value)


async def test_anon_key_cannot_run_the_queue_functions(pg_dsn: str) -> None:
    anon = mint_key("anon")
    standin = PostgrestStandin(pg_dsn, anon)
    store = SupabaseStore(await standin.start(), anon)
    try:
        with pytest.raises(StoreError, match="service_role key") as info:
            await store.connect()  # execute is granted to service_role only (42501 → 401)
        assert info.value.details["code"] == "42501" and "permission denied" in str(info.value)
    finally:
        await store.close()
        await standin.stop()


# --- polling ---------------------------------------------------------------------------------------------


async def test_wait_for_work_polls_at_the_interval_with_jitter(standin: PostgrestStandin) -> None:
    store = SupabaseStore(standin.base_url, KEY, poll_interval=0.2)
    await store.connect()
    try:
        before = len(standin.calls("work_ready"))
        t0 = time.monotonic()
        assert await store.wait_for_work(1.0) is False
        elapsed = time.monotonic() - t0
        polls = len(standin.calls("work_ready")) - before
        # bounds wide enough for a loaded CI machine: it waits the whole second, polling several times, not
        # continuously and not once
        assert 1.0 <= elapsed < 3.0
        assert 2 <= polls <= 8, polls  # 1 s / (0.2 s +-20 %) and one last look at the deadline
    finally:
        await store.close()


async def test_wait_for_work_wakes_on_a_ready_task_only(store: SupabaseStore) -> None:
    await store.enqueue(NewTask("comfy", {}, run_at=datetime.now(UTC) + timedelta(hours=1)))
    assert await store.wait_for_work(0.3) is False  # queued, but not due
    waiter = asyncio.create_task(store.wait_for_work(10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    t0 = time.monotonic()
    await store.enqueue(NewTask("comfy", {}))
    assert await waiter is True
    assert time.monotonic() - t0 < 3.0  # one poll, not the 10 s timeout


async def test_wait_for_work_honours_task_types(standin: PostgrestStandin) -> None:
    store = SupabaseStore(standin.base_url, KEY, poll_interval=0.05, task_types=["i2v"])
    await store.connect()
    try:
        await store.enqueue(NewTask("comfy", {}))
        assert await store.wait_for_work(0.3) is False
        await store.enqueue(NewTask("i2v", {}))
        assert await store.wait_for_work(2) is True
    finally:
        await store.close()


async def test_a_failed_poll_is_not_an_error(store: SupabaseStore, standin: PostgrestStandin) -> None:
    await store.enqueue(NewTask("comfy", {}))
    standin.fail_next(503, "")
    assert await store.wait_for_work(2) is True  # the 503 poll was retried at the next interval
    assert len([r for r in standin.calls("work_ready")]) >= 2
