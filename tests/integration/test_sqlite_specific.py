"""What only the embedded SQLite store has to prove (the shared rules are in test_store_conformance.py):

* the README's statements work unchanged on the file, through Python's sqlite3 module and the sqlite3 shell,
  and rows written there are ordinary tasks to the store;
* the monitoring views are selectable and compute what Postgres' would (percentile_cont included);
* migrate is idempotent, re-applies a changed file, and an unmigrated file says SchemaMissing;
* several processes share the file (WAL) and never claim a task twice;
* a locked or unusable file is StoreUnavailable, never a raw sqlite3 error;
* errors carry the same classes and messages as the Postgres functions (checked against real Postgres).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.errors import (
    ComfyWorkerError,
    InvalidArgument,
    SchemaMissing,
    StoreUnavailable,
)
from comfy_worker.models import NewTask, TaskStatus, WorkerInfo
from comfy_worker.store.base import TaskStore
from comfy_worker.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
README_INSERT = """INSERT INTO tasks (task_type, params, status) VALUES ('comfy', '{"workflow": {}}', 'queued');"""
README_RECENT = (
    "SELECT task_id, task_type, status, created_at, started_at, completed_at FROM tasks "
    "WHERE task_type = 'comfy' ORDER BY created_at DESC LIMIT 10;"
)
README_OUTPUT = "SELECT output_url FROM tasks WHERE task_id = 'abc-123';"
README_WORKERS = (
    "SELECT id, status, current_task_id, last_heartbeat FROM workers WHERE id LIKE 'comfy-worker-%' "
    "ORDER BY created_at DESC;"
)
VIEWS = ("queue_summary", "worker_liveness", "throughput_last_hour", "recent_failures")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "q.db", poll_interval=0.05)
    await s.connect()
    await s.migrate()
    yield s
    await s.close()


def shell(db: Path, sql: str) -> list[str]:
    """Run SQL in the real sqlite3 command-line shell; rows as 'a|b|c' lines."""
    exe = shutil.which("sqlite3")
    if exe is None:
        pytest.skip("the sqlite3 shell is not installed")
    out = subprocess.run([exe, str(db)], input=sql, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the README's statements ------------------------------------------------------------------------------


async def test_readme_statements_work_unchanged_in_python_sqlite3(store: SqliteStore) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute(README_INSERT)
        conn.execute(README_INSERT)
    conn = sqlite3.connect(store.path)
    try:
        rows = conn.execute(README_RECENT).fetchall()
        assert [r[1:3] for r in rows] == [("comfy", "queued")] * 2
        assert conn.execute(README_OUTPUT).fetchall() == []
        assert conn.execute(README_WORKERS).fetchall() == []
    finally:
        conn.close()
    # the rows are ordinary tasks: random UUID ids, parseable timestamps, claimable, completable
    await store.register_worker(WorkerInfo("comfy-worker-1", "h", 1, "v", ("comfy",)))
    claimed = await store.claim("comfy-worker-1", ["comfy"], 5, 30)
    assert sorted(t.task_id for t in claimed) == sorted(r[0] for r in rows)
    for t in claimed:
        assert len(t.task_id) == 36 and t.task_id[14] == "4"  # a version-4 UUID
        assert t.params == {"workflow": {}} and t.created_at is not None and t.created_at.tzinfo is not None
        await store.complete(t.task_id, t.lease_token or "", {"ok": True}, f"https://example.test/{t.task_id}")
    with sqlite3.connect(store.path) as conn:
        (worker,) = conn.execute(README_WORKERS).fetchall()
        assert worker[:3] == ("comfy-worker-1", "idle", None) and worker[3] is not None
        done = conn.execute(README_RECENT).fetchall()
        assert {r[2] for r in done} == {"complete"} and all(r[4] and r[5] for r in done)


async def test_readme_statements_work_unchanged_in_the_sqlite3_shell(store: SqliteStore) -> None:
    shell(store.path, README_INSERT)
    rows = shell(store.path, README_RECENT)
    assert len(rows) == 1
    task_id, task_type, status, created_at, started_at, completed_at = rows[0].split("|")
    assert (task_type, status, started_at, completed_at) == ("comfy", "queued", "", "")
    assert datetime.fromisoformat(created_at) <= datetime.now(UTC)
    assert shell(store.path, README_OUTPUT) == []
    assert shell(store.path, README_WORKERS) == []
    assert (await store.get_task(task_id)).status is TaskStatus.QUEUED


async def test_direct_inserts_are_checked_like_postgres(store: SqliteStore) -> None:
    bad = [
        "INSERT INTO tasks (task_type, params) VALUES ('comfy', '[1, 2]')",  # not an object
        "INSERT INTO tasks (task_type, params) VALUES ('comfy', 'not json')",
        "INSERT INTO tasks (task_type, params, status) VALUES ('comfy', '{}', 'done')",  # unknown status
        "INSERT INTO tasks (task_type, params, run_at) VALUES ('comfy', '{}', 'tomorrow-ish')",
        "INSERT INTO workers (id, status) VALUES ('w', 'sleeping')",
    ]
    with sqlite3.connect(store.path) as conn:
        for sql in bad:
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)
        assert conn.execute("select count(*) from tasks").fetchone() == (0,)


async def test_hand_written_run_at_is_normalised_to_utc(store: SqliteStore) -> None:
    future = (datetime.now(UTC) + timedelta(hours=2)).astimezone(timezone(timedelta(hours=2)))
    past = datetime.now(UTC) - timedelta(minutes=5)
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "insert into tasks (task_id, task_type, run_at) values ('later', 'comfy', ?), ('soon', 'x', ?)",
            (future.isoformat(sep=" ", timespec="seconds"), past.strftime("%Y-%m-%d %H:%M:%S")),
        )
    later = await store.get_task("later")
    assert later.run_at is not None and abs((later.run_at - future).total_seconds()) < 1
    await store.register_worker(WorkerInfo("w", "h", 1, "v"))
    assert [t.task_id for t in await store.claim("w", None, 5, 30)] == ["soon"]  # a past run_at is due


# --- monitoring views -------------------------------------------------------------------------------------


async def test_views_are_selectable_everywhere_and_match_postgres_percentiles(store: SqliteStore) -> None:
    now = datetime.now(UTC)
    waits = [0.5, 1.0, 2.0, 4.0, 10.0]  # seconds between creation and start, first attempts
    durations = [1.0, 3.0, 3.5, 8.0, 20.0]
    values = []
    for i, (w, d) in enumerate(zip(waits, durations, strict=True)):
        created = now - timedelta(minutes=30, seconds=i)
        started = created + timedelta(seconds=w)
        done = started + timedelta(seconds=d)
        stamps = ", ".join(f"'{ts(x)}'" for x in (created, started, done, done))
        values.append(f"('done-{i}', 'comfy', 'complete', 1, {stamps})")
    await store.test_exec(
        "insert into tasks (task_id, task_type, status, attempts, created_at, started_at, completed_at, "
        "updated_at) values " + ", ".join(values)
    )
    await store.enqueue(NewTask("comfy", {}, task_id="waiting"))
    await store.enqueue(NewTask("i2v", {}, task_id="later", run_at=now + timedelta(hours=1)))
    await store.register_worker(WorkerInfo("comfy-worker-a", "h", 1, "v", ("comfy",), {"gpu": "L4"}))
    await store.claim("comfy-worker-a", ["comfy"], 1, 30)
    await store.enqueue(NewTask("comfy", {}, task_id="doomed"))
    [doomed] = await store.claim("comfy-worker-a", ["comfy"], 1, 30)
    await store.fail("doomed", doomed.lease_token or "", "it broke", {"node": "7"}, retryable=False)

    def pct(xs: list[float], p: float) -> float:  # percentile_cont
        xs = sorted(xs)
        k = p * (len(xs) - 1)
        lo = int(k)
        return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)

    snap = await store.fleet_snapshot()
    assert set(snap) == {"at", "queue", "workers", "throughput", "failures"}
    queue = {q["task_type"]: q for q in snap["queue"]}
    assert (queue["comfy"]["queued"], queue["comfy"]["running"], queue["i2v"]["ready"]) == (0, 1, 0)
    assert queue["i2v"]["queued"] == 1 and queue["i2v"]["oldest_queued_age_s"] >= 0
    all_waits = [*waits, *(await _waits_of(store, ["waiting", "doomed"]))]
    assert queue["comfy"]["wait_p50_s_1h"] == pytest.approx(pct(all_waits, 0.5), abs=0.01)
    assert queue["comfy"]["wait_p95_s_1h"] == pytest.approx(pct(all_waits, 0.95), abs=0.01)
    thr = {t["task_type"]: t for t in snap["throughput"]}["comfy"]
    assert (thr["completed"], thr["failed"], thr["cancelled"]) == (5, 1, 0)
    assert thr["duration_p50_s"] == pytest.approx(statistics.median(durations), abs=0.01)
    assert thr["duration_p95_s"] == pytest.approx(pct(durations, 0.95), abs=0.01)
    [wk] = snap["workers"]
    assert wk["id"] == "comfy-worker-a" and wk["alive"] is True and wk["running_tasks"] == 1
    assert wk["metadata"] == {"gpu": "L4"} and wk["task_types"] == ["comfy"] and wk["tasks_failed"] == 1
    [failure] = snap["failures"]
    assert failure["task_id"] == "doomed" and failure["error_details"]["node"] == "7"
    # the same views in the sqlite3 shell, as an operator would read them
    for view in VIEWS:
        header = shell(store.path, f".headers on\nselect * from {view};")[0]
        assert header.split("|")[0] in ("task_type", "id", "task_id")


async def _waits_of(store: SqliteStore, ids: list[str]) -> list[float]:
    out = []
    for i in ids:
        t = await store.get_task(i)
        assert t.started_at is not None and t.created_at is not None
        out.append((t.started_at - t.created_at).total_seconds())
    return out


# --- schema -----------------------------------------------------------------------------------------------


async def test_migrate_twice_is_harmless_and_a_changed_file_is_reapplied(store: SqliteStore) -> None:
    await store.enqueue(NewTask("comfy", {"keep": 1}, task_id="keep-me"))
    assert await store.migrate() == []
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "update comfy_worker_migrations set checksum = 'old' where version in ('002_views', '008_webhooks')"
        )
    # a re-applied file brings every later one with it (their triggers and views must win); 008's ADD COLUMN is
    # skipped when re-run
    assert await store.migrate() == ["002_views", "003_worker_disk", "008_webhooks", "009_webhooks_review"]
    assert await store.migrate() == []
    assert (await store.get_task("keep-me")).params == {"keep": 1}
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
        versions = [r[0] for r in conn.execute("select version from comfy_worker_migrations order by 1")]
    assert versions == ["001_tables", "002_views", "003_worker_disk", "008_webhooks", "009_webhooks_review"]


async def test_unmigrated_file_says_schema_missing(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "empty.db")
    await s.connect()
    try:
        with pytest.raises(SchemaMissing, match="comfy-worker migrate"):
            await s.check_schema()
        with pytest.raises(SchemaMissing, match="comfy-worker migrate"):
            await s.claim("w", None, 1, 30)
        assert await s.migrate() == ["001_tables", "002_views", "003_worker_disk", "008_webhooks",
                                     "009_webhooks_review"]
        await s.check_schema()
    finally:
        await s.close()


# --- files and locks --------------------------------------------------------------------------------------


async def test_unusable_files_are_store_unavailable(tmp_path: Path) -> None:
    missing_dir = SqliteStore(tmp_path / "no" / "such" / "dir" / "q.db")
    with pytest.raises(StoreUnavailable, match="directory must exist"):
        await missing_dir.connect()
    await missing_dir.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file at all " * 200)
    not_db = SqliteStore(junk)
    with pytest.raises(StoreUnavailable, match="must be a SQLite database"):
        await not_db.connect()
    await not_db.close()
    never_connected = SqliteStore(tmp_path / "x.db")
    with pytest.raises(StoreUnavailable, match="connect"):
        await never_connected.get_task("x")


async def test_locked_database_is_store_unavailable_then_recovers(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "q.db", busy_timeout_s=0.2)
    await s.connect()
    await s.migrate()
    await s.register_worker(WorkerInfo("w", "h", 1, "v"))
    await s.enqueue(NewTask("comfy", {}, task_id="t"))
    other = sqlite3.connect(s.path, isolation_level=None)
    try:
        other.execute("begin immediate")  # another process holds the write lock
        with pytest.raises(StoreUnavailable, match="locked") as err:
            await s.claim("w", None, 1, 30)
        assert err.value.retryable
        assert (await s.get_task("t")).status is TaskStatus.QUEUED  # WAL: readers are not blocked
        other.execute("rollback")
        [t] = await s.claim("w", None, 1, 30)
        assert t.task_id == "t" and t.attempts == 1
    finally:
        other.close()
        await s.close()


# --- several processes ------------------------------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from comfy_worker.models import WorkerInfo
    from comfy_worker.store.sqlite import SqliteStore

    async def main(path, prefix, n):
        store = SqliteStore(path, poll_interval=0.02)
        await store.connect()
        done = {}
        for i in range(n):
            await store.register_worker(WorkerInfo(f"{prefix}-{i}", "h", 0, "v"))
        print("ready", flush=True)  # the test starts both processes' claimers together
        sys.stdin.readline()
        async def claimer(i):
            wid = f"{prefix}-{i}"
            mine = done.setdefault(wid, [])
            while True:
                tasks = await store.claim(wid, None, 3, 60)
                if not tasks:
                    if not await store.wait_for_work(0.3):
                        return
                    continue
                # the claimed tasks' "work", outside any transaction: as a real worker renders between claim and
                # complete. With none, one process's back-to-back transactions could keep the write lock so hot
                # that the other's busy handler (sleeps up to 100 ms between tries) never got in before the queue
                # was empty (600 of 600 to one process, once in CI)
                await asyncio.sleep(0.01)
                for t in tasks:
                    await store.complete(t.task_id, t.lease_token, {"by": wid})
                    mine.append(t.task_id)
        await asyncio.gather(*(claimer(i) for i in range(n)))
        await store.close()
        print(json.dumps(done))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_two_processes_never_claim_the_same_task(store: SqliteStore) -> None:
    n = 600
    await store.test_exec(
        "insert into tasks (task_id, task_type, params) values "
        + ", ".join(f"('t{i:04d}', 'comfy', '{{\"i\": {i}}}')" for i in range(n))
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLAIMER,
            str(store.path),
            f"p{p}",
            "4",
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for p in range(2)
    ]
    # a start barrier: on a loaded machine one process could otherwise drain the queue before the other runs
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line.strip() == b"ready", line
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        proc.stdin.close()
    outs = await asyncio.gather(*(asyncio.wait_for(p.communicate(), 300) for p in procs))
    per_worker: dict[str, list[str]] = {}
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
        per_worker.update(json.loads(out.decode().strip().splitlines()[-1]))
    counts = Counter(t for ids in per_worker.values() for t in ids)
    assert [t for t, c in counts.items() if c > 1] == []
    assert len(counts) == n
    per_process = Counter(w.split("-")[0] for w, ids in per_worker.items() for _ in ids)
    assert per_process["p0"] > 0 and per_process["p1"] > 0, per_process  # both really took part
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select status, attempts, count(*) from tasks group by 1, 2").fetchall() == [
            ("complete", 1, n)
        ]
        completed = dict(conn.execute("select id, tasks_completed from workers").fetchall())
    assert completed == {w: len(ids) for w, ids in per_worker.items()}


# --- the same errors as Postgres --------------------------------------------------------------------------


async def _error_scenario(store: TaskStore) -> list[tuple[str, str]]:
    """Bad calls and stale reports; what each raised (class, message)."""
    seen: list[tuple[str, str]] = []

    async def attempt(coro: Any) -> None:
        try:
            await coro
        except ComfyWorkerError as exc:
            seen.append((type(exc).__name__, str(exc)))
        else:
            seen.append(("ok", ""))

    await store.register_worker(WorkerInfo("w1", "h", 1, "v"))
    await store.register_worker(WorkerInfo("w2", "h", 1, "v"))
    await store.enqueue(NewTask("comfy", {"a": 1}, task_id="t1", max_attempts=2))
    await store.enqueue(NewTask("comfy", {"a": 2}, task_id="t2"))
    [t1] = await store.claim("w1", None, 1, 30)
    [t2] = await store.claim("w2", None, 1, 30)
    await attempt(store.heartbeat("ghost", 30))
    await attempt(store.claim("ghost", None, 1, 30))
    await attempt(store.claim("w1", None, 0, 30))
    await attempt(store.claim("w1", None, 1, -5))
    await attempt(store.heartbeat("w1", 100000))
    await attempt(store.deregister_worker("ghost"))
    await attempt(store.set_worker_status("ghost", "draining"))
    await attempt(store.register_worker(WorkerInfo("", "h", 1, "v")))
    await attempt(store.get_task("nope"))
    await attempt(store.cancel("nope"))
    await attempt(store.enqueue(NewTask("", {})))
    await attempt(store.enqueue(NewTask("comfy", [1, 2])))  # type: ignore[arg-type]
    await attempt(store.enqueue(NewTask("comfy", {}, max_attempts=0)))
    await attempt(store.enqueue(NewTask("comfy", {}, depends_on=("x1", "t1", "x2"))))
    await attempt(store.update_progress("t1", t1.lease_token or "", [1]))  # type: ignore[arg-type]
    await attempt(store.complete("t1", t1.lease_token or "", "done"))  # type: ignore[arg-type]
    await attempt(store.fail("t1", t1.lease_token or "", ""))
    await attempt(store.fail("t1", t1.lease_token or "", "x", backoff_base_s=-1))
    await attempt(store.complete("t1", t2.lease_token or "", {}))  # someone else's token
    await attempt(store.complete("nope", t1.lease_token or "", {}))
    await attempt(store.release("t1", t1.lease_token or ""))  # back to the queue
    await attempt(store.complete("t1", t1.lease_token or "", {}))  # "requeued"
    [t1b] = await store.claim("w2", None, 1, 30)
    await attempt(store.update_progress("t1", t1.lease_token or "", {"p": 1}))  # held by w2 now
    await attempt(store.fail("t1", t1b.lease_token or "", "boom", retryable=False))
    await attempt(store.complete("t1", t1b.lease_token or "", {}))  # already failed
    await attempt(store.cancel("t1"))
    await attempt(store.cancel("t2"))
    await attempt(store.complete("t2", t2.lease_token or "", {}))  # cancelled
    await attempt(store.heartbeat("w2", 30, metadata=[1]))  # type: ignore[arg-type]
    await attempt(store.requeue_stale(0))
    return seen


async def test_errors_match_postgres_class_and_message(store: SqliteStore, pg_dsn: str) -> None:
    from comfy_worker.store.postgres import PostgresStore

    pg = PostgresStore(pg_dsn, listen=False)
    await pg.connect()
    try:
        expected = await _error_scenario(pg)
    finally:
        await pg.close()
    got = await _error_scenario(store)
    assert got == expected
    # every bad call was refused, and each kind of refusal is there
    assert {c for c, _ in got} >= {"WorkerNotFound", "TaskNotFound", "InvalidArgument", "LeaseLost"}
    assert sum(1 for c, _ in got if c == "ok") == 3  # the release, the permanent failure, cancelling t2


async def test_invalid_argument_is_not_partial(store: SqliteStore) -> None:
    await store.register_worker(WorkerInfo("w", "h", 1, "v"))
    await store.enqueue(NewTask("comfy", {}, task_id="a"))
    [a] = await store.claim("w", None, 1, 30)
    with pytest.raises(InvalidArgument):
        await store.complete("a", a.lease_token or "", {"x": float("nan")})
    t = await store.get_task("a")
    assert t.status is TaskStatus.RUNNING and t.result is None
    with pytest.raises(InvalidArgument, match="lease_token"):
        await store.complete("a", "not-a-uuid", {})
    await store.complete("a", (a.lease_token or "").upper(), {})  # uuids compare as values, as in Postgres


async def _state_scenario(store: TaskStore) -> list[Any]:
    """A run through every rule that moves state; returns what each step answered and the final rows."""
    log: list[Any] = []
    reg = store.register_worker
    await reg(WorkerInfo("w1", "h", 1, "v", ("comfy",), {"gpu": "A"}))
    await reg(WorkerInfo("w2", "h", 2, "v", (), {"gpu": "B"}))
    for tid, prio, deps in [
        ("root", 1, ()),
        ("child", 0, ("root",)),
        ("grandchild", 0, ("child",)),
        ("other", 0, ()),
        ("retry", 0, ()),
        ("keep", 0, ()),
    ]:
        await store.enqueue(
            NewTask(
                "comfy",
                {"id": tid},
                task_id=tid,
                priority=prio,
                depends_on=deps,
                max_attempts=3,
                dedupe_key=f"k-{tid}",
            )
        )
    dup = await store.enqueue(NewTask("comfy", {"id": "dup"}, dedupe_key="k-other"))
    log.append(("dedupe", dup.task_id))
    claimed = {t.task_id: t for t in await store.claim("w1", None, 3, 30)}
    log.append(("claim", sorted(claimed)))
    await store.update_progress("root", claimed["root"].lease_token or "", {"pct": 50}, {"step": 1})
    await store.fail("root", claimed["root"].lease_token or "", "bad graph", {"node": 3}, retryable=False)
    await store.cancel("other")
    log.append(("hb-list", await store.heartbeat("w1", 30, {"temp": 70}, ["other", "retry", "gone", "root"])))
    log.append(("hb", await store.heartbeat("w1", 30)))
    log.append(("hb-again", await store.heartbeat("w1", 30)))
    await store.fail(
        "retry", claimed["retry"].lease_token or "", "flaky", None, backoff_base_s=0.01, backoff_cap_s=0.01
    )
    await store.set_worker_status("w2", "draining", {"why": "scale-in"})
    log.append(("draining-claim", await store.claim("w2", None, 5, 30)))
    [keep] = await store.claim("w1", ["comfy"], 1, 30)
    log.append(("claim-keep", keep.task_id))
    await reg(WorkerInfo("w1", "h", 3, "v2", ("comfy",), {"restarted": True}))  # requeues what w1 held
    await asyncio.sleep(0.05)  # the retry's backoff (at most 10 ms) runs out
    short = await store.claim("w1", None, 5, 0.2)
    log.append(("claim-short", sorted(t.task_id for t in short)))
    await asyncio.sleep(0.4)  # the 0.2 s leases run out in real time
    log.append(("stale", await store.requeue_stale(3600)))
    again = await store.claim("w1", None, 5, 30)
    log.append(("claim-again", sorted(t.task_id for t in again)))
    await store.deregister_worker("w1")  # releases without spending attempts
    await asyncio.sleep(0.05)
    log.append(("lost", await store.requeue_stale(0.01)))
    ids = ["root", "child", "grandchild", "other", "retry", "keep"]
    for tid in ids:
        t = await store.get_task(tid)
        details = {k: v for k, v in (t.error_details or {}).items() if k != "retry_in_s"}
        log.append(
            (
                tid,
                t.status,
                t.attempts,
                t.worker_id,
                t.lease_token is not None,
                t.error,
                details,
                t.progress,
                t.checkpoint,
                t.result,
            )
        )
    snap = await store.fleet_snapshot()
    log.append(("snapshot-columns", {k: sorted(v[0]) if v else [] for k, v in snap.items() if k != "at"}))
    keys = ("id", "status", "current_task_id", "tasks_completed", "tasks_failed", "metadata", "running_tasks")
    log.append(("workers", [{k: w[k] for k in keys} for w in snap["workers"]]))
    return log


async def test_state_transitions_match_postgres(store: SqliteStore, pg_dsn: str) -> None:
    from comfy_worker.store.postgres import PostgresStore

    pg = PostgresStore(pg_dsn, listen=False)
    await pg.connect()
    try:
        expected = await _state_scenario(pg)
    finally:
        await pg.close()
    got = await _state_scenario(store)
    for want, have in zip(expected, got, strict=True):
        assert have == want
