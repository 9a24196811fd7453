"""``python -m gpu_orchestrator --dry-run --once`` in a subprocess against a real database."""

from __future__ import annotations

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
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "SUPABASE_"))}
        env.update(DATABASE_URL=pg_dsn, LOG_FORMAT="json", PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-m", "gpu_orchestrator", "--dry-run", "--once"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(x) for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("{")]
        decisions = [x for x in lines if x["event"] == "orchestrator_decision"]
        assert len(decisions) == 1
        d = decisions[0]
        assert d["queued"] == 5 and d["dry_run"] is True and d["action"] == "spawn 3" and d["desired"] == 3
        assert {"oldest_queued_age_s", "workers", "capacity", "spawn_reason"} <= d.keys()
        # per-minute counts from SQL: the 5 tasks of this minute are a burst (median 0/min -> clipped to 3), so
        # the steady rate is 3 per 10 minutes = 18/h (the plain 10-minute count would say 30/h)
        assert d["arrivals_per_h"] == 18.0
        assert await conn.fetchval("select count(*) from workers") == 0
    finally:
        await conn.close()
