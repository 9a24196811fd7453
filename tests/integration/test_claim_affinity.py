"""Engine / model affinity in the claim (sql/006_claim_affinity.sql and its SQLite mirror).

* Conformance (postgres, sqlite, supabase): the preferred type goes first among equal priorities, priority
  and overdue tasks are never passed, weights rank types, task_types and dependencies still apply, bad
  preferences are InvalidArgument.
* Property tests (real PostgreSQL and the SQLite mirror, hypothesis): one claim on a random queue returns
  exactly the specified order, and checks the rules themselves; a simulated stream of arrivals with a worker
  that always prefers one type never lets any task wait past the bound: once a task has waited max_wait it is
  claimed within as many claims as there were older tasks still queued at that moment.
* Narrowed claims (sql/007_claim_index.sql looks each task type up on its own): without a preference a claim
  with task types takes exactly the plain order of the claimable tasks of those types (property test), and
  exact ties across types go in insertion order, as one walk of the whole queue gave them.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from comfy_worker.errors import InvalidArgument
from comfy_worker.models import ClaimPreference, NewTask, TaskStatus, WorkerInfo
from comfy_worker.store.base import TaskStore
from tests.conftest import run_sync
from tests.integration.pg_plans import executed_plans, log_plans

LEASE = 30.0
TYPES = ("comfy", "i2v", "i2v_22", "t2v")


async def worker(store: TaskStore, wid: str = "w1") -> str:
    await store.register_worker(WorkerInfo(wid, "test-host", 1, "test", TYPES, {}))
    return wid


async def enqueue(store: TaskStore, task_type: str, *, age_s: float = 0.0, priority: int = 0,
                  depends_on: tuple[str, ...] = ()) -> str:
    run_at = datetime.now(UTC) - timedelta(seconds=age_s)
    task = NewTask(task_type, {"i": uuid.uuid4().hex}, priority=priority, run_at=run_at, depends_on=depends_on)
    return (await store.enqueue(task)).task_id


def prefer(weights: dict[str, float], max_wait_s: float = 300.0) -> ClaimPreference:
    return ClaimPreference(weights, max_wait_s)


# --- conformance: every store ------------------------------------------------------------------------------


async def test_a_worker_holding_i2v_takes_i2v_before_an_older_comfy_task(store: TaskStore) -> None:
    w = await worker(store)
    comfy = await enqueue(store, "comfy", age_s=30)
    i2v = await enqueue(store, "i2v")
    [first] = await store.claim(w, None, 1, LEASE, prefer({"i2v": 2}))
    assert first.task_id == i2v and first.status is TaskStatus.RUNNING and first.worker_id == w
    [second] = await store.claim(w, None, 1, LEASE, prefer({"i2v": 2}))
    assert second.task_id == comfy


async def test_without_a_preference_the_order_is_unchanged(store: TaskStore) -> None:
    w = await worker(store)
    comfy = await enqueue(store, "comfy", age_s=30)
    await enqueue(store, "i2v")
    assert [t.task_id for t in await store.claim(w, None, 1, LEASE)] == [comfy]


async def test_overdue_tasks_and_priority_are_never_passed(store: TaskStore) -> None:
    w = await worker(store)
    urgent = await enqueue(store, "comfy", priority=1)
    overdue = await enqueue(store, "comfy", age_s=400)
    fresh = await enqueue(store, "i2v", age_s=10)
    claimed = await store.claim(w, None, 3, LEASE, prefer({"i2v": 1}, 300))
    assert [t.task_id for t in claimed] == [urgent, overdue, fresh]


async def test_weights_rank_types_and_zero_wait_means_plain_order(store: TaskStore) -> None:
    w = await worker(store)
    comfy = await enqueue(store, "comfy", age_s=3)
    t2v = await enqueue(store, "t2v", age_s=2)
    i2v = await enqueue(store, "i2v", age_s=1)
    claimed = await store.claim(w, None, 3, LEASE, prefer({"i2v": 2, "t2v": 1}))
    assert [t.task_id for t in claimed] == [i2v, t2v, comfy]
    w2 = await worker(store, "w2")
    again = [await enqueue(store, t, age_s=3 - i) for i, t in enumerate(("comfy", "t2v", "i2v"))]
    claimed = await store.claim(w2, None, 3, LEASE, prefer({"i2v": 2, "t2v": 1}, 0))
    assert [t.task_id for t in claimed] == again


async def test_task_types_and_dependencies_still_apply(store: TaskStore) -> None:
    w = await worker(store)
    blocker = await enqueue(store, "comfy", age_s=50)
    await enqueue(store, "i2v", depends_on=(blocker,))
    await enqueue(store, "t2v", age_s=5)
    comfy = await enqueue(store, "comfy", age_s=10)
    # i2v is preferred but waits for its dependency; t2v is preferred but not a type this claim takes
    claimed = await store.claim(w, ["comfy", "i2v"], 1, LEASE, prefer({"i2v": 3, "t2v": 2}))
    assert [t.task_id for t in claimed] == [blocker]
    claimed = await store.claim(w, ["comfy", "i2v"], 1, LEASE, prefer({"i2v": 3, "t2v": 2}))
    assert [t.task_id for t in claimed] == [comfy]


@pytest.mark.parametrize(
    ("preference", "text"),
    [
        (prefer({"i2v": 0}), "preference.weights.i2v must be a number > 0"),
        (prefer({"i2v": -1.5}), "must be a number > 0"),
        (prefer({"i2v": 1}, -1), "max_wait_s must be a number of seconds from 0 to 604800"),
        (prefer({"i2v": 1}, 10**7), "max_wait_s must be a number of seconds"),
    ],
)
async def test_a_bad_preference_is_an_invalid_argument(store: TaskStore, preference: ClaimPreference,
                                                       text: str) -> None:
    w = await worker(store)
    await enqueue(store, "i2v")
    with pytest.raises(InvalidArgument, match=text):
        await store.claim(w, None, 1, LEASE, preference)
    assert len(await store.claim(w, None, 1, LEASE)) == 1  # nothing was claimed by the refused call


# --- property tests: PostgreSQL and the SQLite mirror ---------------------------------------------------------


@dataclass
class Harness:
    """A connected store on the test's database plus raw SQL against it (to move simulated time)."""

    store: TaskStore
    kind: str
    location: str
    conn: asyncpg.Connection | None = None

    async def sql(self, statement: str) -> None:
        if self.conn is not None:
            await self.conn.execute(statement)
        else:
            with sqlite3.connect(self.location, timeout=30) as conn:
                conn.execute(statement)

    async def reset(self) -> None:
        await self.sql("delete from tasks")
        await self.sql("delete from workers")

    async def shift_queued(self, seconds: int) -> None:
        """Age every queued task by whole seconds, keeping each timestamp's fraction as it is. Only the whole seconds
        go through SQLite's date functions: they read a fraction to the millisecond and round, so ``…:01.9998``
        shifted whole would come out one second short (the rare flaky failure of test_no_task_waits_past_the_bound)."""
        if self.kind == "postgres":
            await self.sql(f"update tasks set run_at = run_at - interval '{seconds} seconds', "
                           f"created_at = created_at - interval '{seconds} seconds' where status = 'queued'")
        else:
            shift = "strftime('%Y-%m-%dT%H:%M:%S', substr({c}, 1, 19), '-{s} seconds') || substr({c}, 20)"
            await self.sql(f"update tasks set run_at = {shift.format(c='run_at', s=seconds)}, "
                           f"created_at = {shift.format(c='created_at', s=seconds)} where status = 'queued'")


async def open_harness(kind: str, location: str) -> Harness:
    if kind == "postgres":
        from comfy_worker.store.postgres import PostgresStore

        store: Any = PostgresStore(location, listen=False, pool_max=1)
        await store.connect()
    else:
        from comfy_worker.store.sqlite import SqliteStore

        store = SqliteStore(Path(location), poll_interval=0.05)
        await store.connect()
        await store.migrate()
    harness = Harness(store, kind, location, await asyncpg.connect(location) if kind == "postgres" else None)
    await harness.reset()
    return harness


async def close_harness(h: Harness) -> None:
    await h.store.close()
    if h.conn is not None:
        await h.conn.close()


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("pg_dsn")
    return "sqlite", str(tmp_path / "queue.db")


@dataclass(frozen=True)
class Queued:
    task_type: str
    priority: int
    age_s: int


def expected_order(queue: list[Queued], weights: dict[str, float], max_wait: int, n: int,
                   types: list[str] | None) -> list[int]:
    """The specification: priority, then overdue (waited >= max_wait) first, then weight (0 for overdue
    tasks), then the plain order (oldest run_at, then insertion)."""
    def key(i: int) -> tuple[Any, ...]:
        q = queue[i]
        overdue = q.age_s >= max_wait
        return (-q.priority, not overdue, -(0 if overdue else weights.get(q.task_type, 0)), -q.age_s, i)

    eligible = [i for i, q in enumerate(queue) if types is None or q.task_type in types]
    return sorted(eligible, key=key)[:n]


queued = st.builds(Queued, st.sampled_from(TYPES), st.sampled_from((0, 0, 0, 1)), st.integers(0, 900))
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(
    queue=st.lists(queued, min_size=1, max_size=12),
    weights=st.dictionaries(st.sampled_from(TYPES), st.sampled_from((1.0, 2.0, 3.0)), max_size=3),
    max_wait=st.sampled_from((0, 60, 300, 600)),
    n=st.integers(1, 4),
    types=st.sampled_from((None, ["comfy", "i2v"], ["i2v", "i2v_22", "t2v"])),
)
def test_one_claim_follows_the_specified_order(
    db: tuple[str, str], queue: list[Queued], weights: dict[str, float], max_wait: int, n: int,
    types: list[str] | None,
) -> None:
    # real seconds pass between enqueue and claim: keep every age clear of the overdue boundary by 3 s
    assume(all(q.age_s >= max_wait or q.age_s <= max_wait - 3 for q in queue))

    async def scenario() -> list[str]:
        h = await open_harness(*db)
        try:
            w = await worker(h.store)
            base = datetime.now(UTC)
            ids = []
            for q in queue:
                task = NewTask(q.task_type, {}, priority=q.priority, run_at=base - timedelta(seconds=q.age_s))
                ids.append((await h.store.enqueue(task)).task_id)
            claimed = await h.store.claim(w, types, n, LEASE, ClaimPreference(weights, max_wait))
            index = {task_id: i for i, task_id in enumerate(ids)}
            return [index[t.task_id] for t in claimed]  # type: ignore[misc]
        finally:
            await close_harness(h)

    got: list[int] = run_sync(scenario())  # type: ignore[assignment]
    assert got == expected_order(queue, weights, max_wait, n, types)
    # the rules themselves, for every claimed task X and every eligible task Y left in the queue
    left = [i for i, q in enumerate(queue) if (types is None or q.task_type in types) and i not in got]
    for x in got:
        for y in left:
            qx, qy = queue[x], queue[y]
            assert qx.priority >= qy.priority  # a preference never overrides priority
            if qx.priority == qy.priority and qy.age_s >= max_wait:
                assert qx.age_s >= qy.age_s  # an overdue task is passed by nothing behind it
            if qx.priority == qy.priority and max(qx.age_s, qy.age_s) < max_wait:
                assert weights.get(qx.task_type, 0) >= weights.get(qy.task_type, 0)  # preferred first



@dataclass(frozen=True)
class Plain:
    task_type: str
    priority: int
    age_s: int
    blocked: bool  # depends on the first task of the queue, which is still queued


@PROPERTY
@given(
    queue=st.lists(st.builds(Plain, st.sampled_from(TYPES), st.sampled_from((0, 0, 1, 2)), st.sampled_from((0, 5, 60)),
                             st.booleans()), min_size=1, max_size=12),
    n=st.integers(1, 5),
    types=st.sampled_from((["i2v"], ["comfy", "i2v"], ["t2v", "i2v_22", "t2v"], ["i2v", "s2v"], ["s2v"])),
)
def test_a_narrowed_claim_takes_the_plain_order_of_its_types(
    db: tuple[str, str], queue: list[Plain], n: int, types: list[str],
) -> None:
    async def scenario() -> list[str]:
        h = await open_harness(*db)
        try:
            w = await worker(h.store)
            base = datetime.now(UTC)
            ids: list[str] = []
            for i, q in enumerate(queue):
                deps = (ids[0],) if q.blocked and i > 0 else ()
                task = NewTask(q.task_type, {}, priority=q.priority, run_at=base - timedelta(seconds=q.age_s),
                               depends_on=deps)
                ids.append((await h.store.enqueue(task)).task_id)
            claimed = await h.store.claim(w, types, n, LEASE)
            index = {task_id: i for i, task_id in enumerate(ids)}
            return [index[t.task_id] for t in claimed]  # type: ignore[misc]
        finally:
            await close_harness(h)

    got: list[int] = run_sync(scenario())  # type: ignore[assignment]
    eligible = [i for i, q in enumerate(queue) if q.task_type in types and not (q.blocked and i > 0)]
    want = sorted(eligible, key=lambda i: (-queue[i].priority, -queue[i].age_s, i))[:n]
    # exact ties (same priority and run_at) are ordered by created_at, i.e. enqueue order, in both stores
    assert got == want


def test_exact_ties_across_types_go_in_insertion_order(db: tuple[str, str]) -> None:
    """Six tasks of two types inserted in one statement share run_at and created_at: a claim narrowed to both
    types takes them in insertion order, the order one walk of the queue's claim index gave."""

    async def scenario() -> tuple[list[str], list[str]]:
        h = await open_harness(*db)
        try:
            w = await worker(h.store)
            if h.kind == "postgres":
                await h.sql("insert into tasks (task_id, task_type) select 't' || g, "
                            "case when g % 2 = 0 then 'i2v' else 't2v' end from generate_series(1, 6) g")
            else:
                await h.sql("insert into tasks (task_id, task_type, run_at, created_at, updated_at) "
                            "select 't' || value, case when value % 2 = 0 then 'i2v' else 't2v' end, "
                            "'2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', "
                            "'2026-01-01T00:00:00.000000Z' from json_each('[1, 2, 3, 4, 5, 6]')")
            one_by_one = [t.task_id for _ in range(3) for t in await h.store.claim(w, ["i2v", "t2v"], 1, LEASE)]
            batch = [t.task_id for t in await h.store.claim(w, ["t2v", "i2v"], 2, LEASE)]
            return one_by_one, batch
        finally:
            await close_harness(h)

    one_by_one, batch = run_sync(scenario())  # type: ignore[misc]
    assert one_by_one == ["t1", "t2", "t3"]
    assert sorted(batch) == ["t4", "t5"]


STEP_S = 10


def test_shifting_simulated_time_ages_every_task_by_exactly_the_shift(db: tuple[str, str]) -> None:
    """The property test below moves time with shift_queued; it must age a task by exactly the shift whatever its
    fraction of a second (SQLite rounded ``.9998`` up to the next second, so such a task aged a second less)."""
    fractions = (999_800, 999_999, 0, 123_456, 500_000)
    base = datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC)

    async def scenario() -> list[tuple[datetime, datetime]]:
        h = await open_harness(*db)
        try:
            ids = []
            for us in fractions:
                task = NewTask("i2v", {"i": us}, run_at=base.replace(microsecond=us))
                ids.append((await h.store.enqueue(task)).task_id)
            before = [(await h.store.get_task(t)).run_at for t in ids]
            for _ in range(3):
                await h.shift_queued(STEP_S)
            return list(zip(before, [(await h.store.get_task(t)).run_at for t in ids], strict=True))
        finally:
            await close_harness(h)

    pairs = run_sync(scenario())  # type: ignore[misc]
    assert [b.microsecond for b, _ in pairs] == list(fractions)
    assert [b - a for b, a in pairs] == [timedelta(seconds=3 * STEP_S)] * len(fractions)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrivals=st.lists(st.lists(st.sampled_from(("i2v", "i2v", "comfy")), max_size=2), min_size=8, max_size=24),
    wait_steps=st.integers(1, 6),
)
def test_no_task_waits_past_the_bound(db: tuple[str, str], arrivals: list[list[str]], wait_steps: int) -> None:
    """One claim per step of STEP_S simulated seconds, always preferring i2v. A task T that arrived at step a is
    overdue from step a + wait_steps; from then on only overdue tasks older than T can go first, so T is claimed
    by step a + wait_steps + (older tasks still queued at that step)."""

    async def simulate() -> tuple[dict[str, int], dict[str, int], list[list[str]]]:
        h = await open_harness(*db)
        arrived: dict[str, int] = {}
        claimed: dict[str, int] = {}
        queued_at_step: list[list[str]] = []  # queue (oldest first) at each step, before its claim
        order: list[str] = []
        try:
            w = await worker(h.store)
            steps = len(arrivals) + 3 * wait_steps + 2 * sum(map(len, arrivals))
            for step in range(steps):
                for task_type in arrivals[step] if step < len(arrivals) else []:
                    task_id = await enqueue(h.store, task_type)
                    arrived[task_id] = step
                    order.append(task_id)
                queued_at_step.append([t for t in order if t not in claimed])
                for task in await h.store.claim(w, None, 1, LEASE, prefer({"i2v": 1}, wait_steps * STEP_S)):
                    claimed[task.task_id] = step
                    await h.store.complete(task.task_id, str(task.lease_token), {})
                await h.shift_queued(STEP_S)
        finally:
            await close_harness(h)
        return arrived, claimed, queued_at_step

    arrived, claimed, queued_at_step = run_sync(simulate())  # type: ignore[misc]
    assert set(claimed) == set(arrived)  # nothing starves: everything is claimed
    order = list(arrived)
    for task_id, a in arrived.items():
        overdue_step = a + wait_steps
        if claimed[task_id] <= overdue_step:
            continue
        older = order[: order.index(task_id)]
        ahead = [t for t in queued_at_step[overdue_step] if t in older]
        assert claimed[task_id] <= overdue_step + len(ahead), (task_id, a, claimed[task_id], len(ahead))


async def test_a_preference_claim_stays_index_lookups_on_a_large_table(pg_conn: asyncpg.Connection) -> None:
    """As tests/integration/test_queue_plans.py for the plain claim: on an analyzed 200k-task table the claim
    with a preference (a common type, a rare one, an absent one) never scans `tasks` and is never JIT-compiled."""
    await pg_conn.execute(
        "insert into tasks (task_type, params) select case when g % 400 = 0 then 'i2v' else 'comfy' end, '{}' "
        "from generate_series(1, 200000) g"
    )
    await pg_conn.execute("analyze tasks")
    await pg_conn.execute("select register_worker('w1')")
    plans = await log_plans(pg_conn)
    preference = '{"weights": {"i2v": 2, "t2v": 1, "comfy": 0.5}, "max_wait_s": 300}'
    for _ in range(8):  # past PL/pgSQL's first custom plans, into the cached ones
        rows = await pg_conn.fetch("select task_id, task_type, lease_token from claim_tasks('w1', null, 2, 60, $1)",
                                   preference)
        assert [r["task_type"] for r in rows] == ["i2v", "i2v"]
        for r in rows:
            await pg_conn.execute("select complete_task($1, $2, '{}', null)", r["task_id"], r["lease_token"])
    executed = await executed_plans(pg_conn, plans)
    assert len(executed) > 30, "auto_explain captured no plans"
    seq = [p for p in executed if "Seq Scan on tasks" in p]
    assert seq == [], seq[0][:3000]
    jitted = [p for p in executed if "JIT:" in p]
    assert jitted == [], jitted[0][:3000]


async def test_a_reapplied_002_cannot_bring_back_the_old_claim_beside_006(pg_dsn: str) -> None:
    from comfy_worker.errors import SchemaMissing
    from comfy_worker.store.migrations import postgres_migrations
    from comfy_worker.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, listen=False)
    await store.connect()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("update comfy_worker_migrations set checksum = 'old' where version = '002_functions'")
        applied = await store.migrate()
        later = [m.version for m in postgres_migrations() if m.version >= "002_functions"]
        assert applied == later and "006_claim_affinity" in applied  # 002 and everything after it
        overloads = await conn.fetchval("select count(*) from pg_proc where proname = 'claim_tasks'")
        assert overloads == 1
        await store.check_schema()
        # the state a partial re-run would leave (the 4-argument form beside 006's) is reported, not half-used
        await conn.execute(
            "create function claim_tasks(text, text[], integer, double precision) returns setof tasks "
            "language sql as 'select * from tasks where false'")
        with pytest.raises(SchemaMissing, match="comfy-worker migrate"):
            await store.check_schema()
    finally:
        await conn.close()
        await store.close()
