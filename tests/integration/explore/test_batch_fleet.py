"""Fleet batches (``comfy-worker batch --fleet``) on real PostgreSQL with two daemons and the test ComfyUI: every
run is a ``comfy`` task, results land in metadata.csv, and a batch killed mid-way resumes without submitting
any run twice (one task per run in the table, each prompt once in ComfyUI's history)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from tests.integration.daemon.conftest import Harness, harness  # noqa: F401 - fixture re-export
from tests.integration.explore.test_batch_local import batch_process, history_markers, journal, read_csv, wait_journal
from tests.integration.explore.workflows import tiny_video, write_batch

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


async def fleet_batch(h: Harness, config: Path, *args: str) -> asyncio.subprocess.Process:
    return await batch_process(config, "--fleet", *args,
                               env={"DATABASE_URL": h.dsn, "LOCAL_STORAGE_DIR": str(h.storage_dir)})


async def test_fleet_batch_killed_and_resumed_submits_each_run_once(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    keep = harness.settings(KEEP_COMFY_FILES="true")  # ComfyUI's history stays: it proves each run ran once
    await harness.start_daemon("explore-w1", settings=keep)
    await harness.start_daemon("explore-w2", settings=keep)
    config = write_batch(tmp_path, workflow=tiny_video(seconds=1.0), num_samples=6, seeds_per_sample=1)
    output = tmp_path / "output"

    proc = await fleet_batch(harness, config)
    state = await wait_journal(output, 2, rendering=False)
    proc.kill()  # the batch process dies; its tasks stay queued and running on the fleet
    await proc.wait()
    assert all(r.get("task_id") for r in state["runs"].values()), "every run was submitted before waiting"

    proc = await fleet_batch(harness, config)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "resuming" in err.decode() and "on the fleet" in err.decode()
    final = journal(output)
    batch_id = final["batch_id"]

    conn = await asyncpg.connect(harness.dsn)
    try:
        rows = await conn.fetch("select task_id, task_type, status, attempts, worker_id, dedupe_key, params "
                                "from tasks order by task_id")
    finally:
        await conn.close()
    assert len(rows) == 6, [r["task_id"] for r in rows]  # one task per run: none submitted twice
    assert all(r["task_type"] == "comfy" and r["status"] == "complete" and r["attempts"] == 1 for r in rows)
    assert {r["task_id"] for r in rows} == {f"explore-{batch_id}-{i:05d}-a1" for i in range(6)}
    assert len({r["dedupe_key"] for r in rows}) == 6
    assert all(r["dedupe_key"].startswith(f"explore:{batch_id}:") for r in rows)
    assert {r["worker_id"] for r in rows} == {"explore-w1", "explore-w2"}
    for r in rows:  # the run's values are in the task's workflow
        run_id = int(r["task_id"].split("-")[-2])
        wf = json.loads(r["params"])["workflow"]
        assert wf["3"]["inputs"]["seed"] == final["runs"][str(run_id)]["values"]["seed"]

    assert history_markers(harness.comfy_url, batch_id) == Counter({f"{batch_id}:{i}": 1 for i in range(6)})
    directory = Path(out.decode().strip().splitlines()[-1])
    rows_csv = read_csv(directory / "metadata.csv")
    assert [r["status"] for r in rows_csv] == ["complete"] * 6
    for r in rows_csv:
        assert (directory / r["outputs"]).is_file() and r["outputs"].endswith(".mp4")
        params = json.loads((directory / "runs" / r["name"] / "params.json").read_text())
        assert params["worker_id"] in ("explore-w1", "explore-w2") and params["task_id"].startswith("explore-")
        assert float(r["seconds"]) >= 1.0  # the task's own run time on the worker (CWSlow waits 1 s)
    assert (directory / "contact_sheet.html").is_file()
