"""``python -m gpu_orchestrator --dry-run --once`` in a subprocess against a real database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[3]


async def test_dry_run_logs_one_decision_and_writes_nothing(pg_dsn: str, tmp_path: Path):
    conn = await asyncpg.connect(pg_dsn)
    try:
        for _ in range(5):
            await conn.execute("select enqueue_task('comfy')")
        proc = subprocess.run(
            [sys.executable, "-m", "gpu_orchestrator", "--dry-run", "--once"],
            env=_orchestrator_env(DATABASE_URL=pg_dsn),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        decisions = [x for x in _events(proc.stdout + proc.stderr) if x["event"] == "orchestrator_decision"]
        assert len(decisions) == 1
        d = decisions[0]
        # 5 x 60 s (no durations yet) must clear within one spawn delay (180 s) + 30 s: one new pod each
        assert d["queued"] == 5 and d["dry_run"] is True and d["action"] == "spawn 5" and d["desired"] == 5
        assert d["spawn_delay_s"] == 180.0  # EXPECTED_SPAWN_S until pods of ours have registered
        assert {"oldest_queued_age_s", "workers", "capacity", "spawn_reason"} <= d.keys()
        # per-minute counts from SQL: the 5 tasks of this minute are a burst (median 0/min -> clipped to 3), so
        # the steady rate is 3 per 10 minutes = 18/h (the plain 10-minute count would say 30/h)
        assert d["arrivals_per_h"] == 18.0
        assert await conn.fetchval("select count(*) from workers") == 0
    finally:
        await conn.close()


def _orchestrator_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "SUPABASE_", "DATABASE_URL"))}
    env.update(LOG_FORMAT="json", PYTHONPATH=str(REPO), **extra)
    return env


def _events(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


async def test_dry_run_through_supabase_reads_the_same_fleet(pg_dsn: str, tmp_path: Path):
    """The orchestrator on a Supabase queue: supabase-py against the PostgREST stand-in (real SQL functions)."""
    from tests.integration.conftest import SUPABASE_TEST_KEY
    from tests.standins.postgrest import PostgrestStandin

    conn = await asyncpg.connect(pg_dsn)
    standin = PostgrestStandin(pg_dsn, SUPABASE_TEST_KEY)
    url = await standin.start()
    try:
        for _ in range(2):
            await conn.execute("select enqueue_task('comfy')")
        env = _orchestrator_env(SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=SUPABASE_TEST_KEY)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gpu_orchestrator", "--dry-run", "--once",
            env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode()
        assert proc.returncode == 0, text
        decisions = [x for x in _events(text) if x["event"] == "orchestrator_decision"]
        assert len(decisions) == 1 and decisions[0]["queued"] == 2 and decisions[0]["action"] == "spawn 2"
        assert SUPABASE_TEST_KEY not in text  # the service-role key never reaches the logs
        assert await conn.fetchval("select count(*) from workers") == 0
    finally:
        await standin.stop()
        await conn.close()


def test_the_embedded_sqlite_queue_is_refused_naming_the_fix(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_orchestrator", "--dry-run", "--once"],
        env=_orchestrator_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    failed = [x for x in _events(proc.stdout + proc.stderr) if x["event"] == "orchestrator_failed"]
    assert len(failed) == 1 and "DATABASE_URL" in failed[0]["error"] and "SUPABASE_URL" in failed[0]["error"]
    assert not (tmp_path / "comfy_worker.db").exists()  # refused before anything was created
