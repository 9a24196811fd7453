"""`comfy-worker migrate` on an empty database, twice, then the README's statements unchanged; the same SQL
files applied with psql -f twice; start-up errors as one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[2]
README_INSERT = """INSERT INTO tasks (task_type, params, status) VALUES ('comfy', '{"workflow": {...}}', 'queued');"""


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfy_worker", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def readme_statements() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert README_INSERT in text
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith(
            (
                "INSERT INTO tasks",
                "SELECT task_id, task_type",
                "SELECT output_url",
                "SELECT id, status, current_task_id",
            )
        )
    ]
    assert len(lines) == 4, lines
    # the documented INSERT has a placeholder graph; a real one goes in its place, the statement is unchanged
    return [ln.replace("{...}", '{"1": {"class_type": "EmptyImage", "inputs": {}}}') for ln in lines]


async def test_migrate_empty_database_twice_then_documented_usage(empty_pg_dsn: str) -> None:
    first = cli("migrate", env={"DATABASE_URL": empty_pg_dsn})
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 001_tables, 002_functions, 003_views")
    second = cli("migrate", env={"DATABASE_URL": empty_pg_dsn})
    assert second.returncode == 0 and "up to date" in second.stdout
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        insert, recent, output, workers = readme_statements()
        await conn.execute(insert)
        rows = await conn.fetch(recent)
        assert len(rows) == 1 and rows[0]["status"] == "queued" and rows[0]["task_type"] == "comfy"
        assert len(rows[0]["task_id"]) == 36  # a random UUID as text
        assert await conn.fetch(output) == []  # no task 'abc-123'
        await conn.execute("select register_worker('comfy-worker-a')")
        assert [r["id"] for r in await conn.fetch(workers)] == ["comfy-worker-a"]
    finally:
        await conn.close()


async def test_sql_files_apply_with_psql_twice(empty_pg_dsn: str) -> None:
    for _ in range(2):
        for f in sorted((REPO / "sql").glob("[0-9][0-9][0-9]_*.sql")):
            r = subprocess.run(
                ["psql", empty_pg_dsn, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(f)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, f"{f.name}: {r.stderr}"
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        await conn.execute(readme_statements()[0])
        assert await conn.fetchval("select count(*) from claim_tasks(null::text, null, 1, 30)") == 0
    except asyncpg.PostgresError as exc:
        assert exc.sqlstate == "CW003"  # unknown worker: the functions are there and answer
    finally:
        await conn.close()


async def test_public_api_roles_see_nothing(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(readme_statements()[0])
        for role in ("anon", "authenticated"):
            async with conn.transaction():
                await conn.execute(f"set local role {role}")
                for sql in (
                    "select count(*) from tasks",
                    "select claim_tasks('w', null, 1, 30)",
                    "select * from queue_summary",
                ):
                    try:
                        async with conn.transaction():
                            await conn.fetch(sql)
                    except asyncpg.InsufficientPrivilegeError:
                        continue
                    raise AssertionError(f"{role} could run: {sql}")
        async with conn.transaction():
            await conn.execute("set local role service_role")
            assert await conn.fetchval("select count(*) from tasks") == 1
        # every function the migrations define, the orchestrator's included: service_role only
        executable = (
            "select coalesce(array_agg(p.proname::text order by p.proname), '{}') from pg_proc p "
            "join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname = 'public' and has_function_privilege($1, p.oid, 'execute')"
        )
        for role in ("anon", "authenticated"):
            assert await conn.fetchval(executable, role) == [], role
        mine = set(await conn.fetchval(executable, "service_role"))
        assert {"claim_tasks", "cancel_spawn", "orchestrator_fleet", "fleet_snapshot", "_cw_service_role_only"} <= mine
    finally:
        await conn.close()


def test_startup_errors_are_one_clear_line(tmp_path: Path) -> None:
    bad_db = cli(
        "--worker-id",
        "w",
        env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nope", "COMFY_URL": "http://127.0.0.1:9"},
        cwd=tmp_path,
    )
    assert bad_db.returncode == 1
    last = bad_db.stderr.strip().splitlines()[-1]
    assert last.startswith("comfy-worker: error:") and "database" in last
    bad_value = cli("status", env={"LEASE_SECONDS": "soon"}, cwd=tmp_path)
    assert bad_value.returncode == 2
    assert bad_value.stderr.strip() == (
        "comfy-worker: configuration error: LEASE_SECONDS: expected a float number, got 'soon'"
    )
    no_comfy = cli("--worker-id", "w", env={"COMFY_PATH": str(tmp_path / "missing"), "COMFY_URL": ""}, cwd=tmp_path)
    assert no_comfy.returncode == 1
    assert no_comfy.stderr.strip().splitlines()[-1] == (
        f"comfy-worker: error: COMFY_PATH={tmp_path / 'missing'} does not exist: point it at the ComfyUI directory"
    )


async def test_worker_without_auto_migrate_refuses_an_empty_database(empty_pg_dsn: str, tmp_path: Path) -> None:
    r = cli(
        "--worker-id",
        "w",
        env={"DATABASE_URL": empty_pg_dsn, "AUTO_MIGRATE": "false", "COMFY_URL": "http://127.0.0.1:9"},
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert "comfy-worker migrate" in r.stderr.strip().splitlines()[-1]
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        assert await conn.fetchval("select to_regclass('tasks')") is None  # nothing was created
    finally:
        await conn.close()
