"""Local batches (``comfy-worker batch --server URL``) against the real test ComfyUI: results land in the batch
directory, and a batch interrupted with Ctrl-C, then killed, then run again executes every run exactly once
(counted in ComfyUI's own history)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_worker.explore.batch import BatchResult
from tests.integration.engine.conftest import ComfyServer
from tests.integration.explore.workflows import tiny_video, write_batch

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[3]


def history_markers(base_url: str, batch_id: str) -> Counter[str]:
    """How many times ComfyUI executed each run of the batch: prompts in /history whose graph carries the run's
    ``_meta.explore_run`` marker."""
    hist = httpx.get(f"{base_url}/history", params={"max_items": 100000}, timeout=30).json()
    seen: Counter[str] = Counter()
    for entry in hist.values():
        graph = entry["prompt"][2]
        for node in graph.values():
            marker = (node.get("_meta") or {}).get("explore_run", "")  # <batch_id>:<run_id>:<attempt>
            if marker.startswith(f"{batch_id}:"):
                seen[marker.rsplit(":", 1)[0]] += 1
    return seen


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_a_local_batch_fills_the_batch_directory(local_batch: BatchResult) -> None:
    d = local_batch.directory
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "workflow.json", "metadata.csv", "progress.json",
                                             "runs", "thumbnails", "contact_sheet.html"}
    rows = read_csv(d / "metadata.csv")
    assert [r["run_id"] for r in rows] == [str(i) for i in range(8)]
    assert list(rows[0]) == ["run_id", "name", "sample_id", "denoise", "color", "prefix", "seed", "status",
                             "attempt", "seconds", "outputs", "error"]
    for r in rows:
        assert r["status"] == "complete" and float(r["seconds"]) > 0 and not r["error"]
        out = d / r["outputs"]
        assert out.is_file() and out.suffix == ".mp4" and out.parent == d / "runs" / r["name"]
        assert Path(r["outputs"]).name.startswith(Path(r["prefix"]).name)  # the run's prefix reached ComfyUI
        params = json.loads((d / "runs" / r["name"] / "params.json").read_text())
        assert params["values"]["denoise"] == float(r["denoise"]) and params["values"]["seed"] == int(r["seed"])
        assert params["prompt_id"] and (d / "thumbnails" / f"{r['name']}.jpg").is_file()
    assert len({r["seed"] for r in rows}) == 8


async def batch_process(config: Path, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", "batch", str(config), *args,
        env={**os.environ, "PYTHONPATH": str(REPO), "LOG_FORMAT": "json", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


def journal(output: Path) -> dict[str, Any]:
    dirs = sorted(output.glob("batch_*"))
    assert len(dirs) == 1, dirs  # the resumed batch never starts a second directory
    return json.loads((dirs[0] / "progress.json").read_text())


async def wait_journal(output: Path, done: int, timeout: float = 120, *, rendering: bool = True) -> dict[str, Any]:
    """Until the journal shows ``done`` runs complete and (``rendering``) the next one rendering in ComfyUI."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = journal(output)
        except (AssertionError, ValueError, FileNotFoundError):
            state = None
        if state:
            statuses = [r["status"] for r in state["runs"].values()]
            if statuses.count("complete") >= done and (not rendering or "running" in statuses):
                return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"the batch did not reach {done} complete runs in {timeout} s")


async def test_ctrl_c_then_kill_then_resume_runs_each_exactly_once(comfyui_server: ComfyServer,
                                                                   tmp_path: Path) -> None:
    config = write_batch(tmp_path, workflow=tiny_video(seconds=1.0), num_samples=6, sampling_strategy="random")
    output = tmp_path / "output"
    url = comfyui_server.base_url

    proc = await batch_process(config, "--server", url)
    state = await wait_journal(output, 1)
    interrupted = next(r for r in state["runs"].values() if r["status"] == "running")
    proc.send_signal(signal.SIGINT)  # Ctrl-C while a run renders
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "interrupted; run the same command again to resume" in err.decode()
    assert "still in ComfyUI's queue" in err.decode() and interrupted["prompt_id"] in err.decode()
    assert journal(output)["state"] == "interrupted"

    proc = await batch_process(config, "--server", url)
    state = await wait_journal(output, 3)
    proc.kill()  # SIGKILL while another run renders: no chance to clean up
    await proc.wait()
    killed = next(r for r in state["runs"].values() if r["status"] == "running")

    proc = await batch_process(config, "--server", url)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "resuming" in err.decode()
    final = journal(output)
    assert final["state"] == "finished"
    assert all(r["status"] == "complete" for r in final["runs"].values())
    # the runs in flight at the interruption and at the kill were collected, not queued again
    assert final["runs"][next(k for k, r in final["runs"].items() if r["name"] == interrupted["name"])][
        "prompt_id"] == interrupted["prompt_id"]
    assert final["runs"][next(k for k, r in final["runs"].items() if r["name"] == killed["name"])][
        "prompt_id"] == killed["prompt_id"]
    executed = history_markers(url, final["batch_id"])
    assert executed == Counter({f"{final['batch_id']}:{i}": 1 for i in range(6)})
    rows = read_csv(Path(out.decode().strip().splitlines()[-1]) / "metadata.csv")
    assert [r["status"] for r in rows] == ["complete"] * 6

    # once finished, the same command does nothing more
    proc = await batch_process(config, "--server", url)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0 and "6 already done, 0 to run" in err.decode()
    assert history_markers(url, final["batch_id"]) == executed


async def test_a_run_killed_while_being_queued_is_found_by_its_tag(comfyui_server: ComfyServer,
                                                                  tmp_path: Path) -> None:
    """The journal says 'submitting' and holds no prompt id (the process died between ComfyUI accepting the
    prompt and the journal write); this older server ignored the requested id. The resumed batch finds the
    prompt by the tag in its _meta and waits for it instead of queueing the run again."""
    import io

    from comfy_worker.engine import ComfyClient
    from comfy_worker.explore.batch import Journal, new_batch_dir, run_batch
    from comfy_worker.explore.batch_config import load_config
    from comfy_worker.explore.runners import LocalRunner, with_marker

    cfg = load_config(write_batch(tmp_path, workflow=tiny_video(seconds=0.5), num_samples=2))
    plan = cfg.plan()
    journal = Journal.open(new_batch_dir(cfg), cfg, plan, "local")
    workflow = with_marker(cfg.workflow_for(plan.runs[0].values), f"{journal.batch_id}:0:1")
    journal.update(0, status="submitting", requested_prompt_id="00000000-0000-5000-8000-000000000000")
    async with ComfyClient(comfyui_server.base_url) as client:
        queued = await client.queue_prompt(workflow)
    result = await run_batch(cfg, LocalRunner(comfyui_server.base_url), out=io.StringIO())
    assert result.complete == 2 and result.directory == journal.path.parent
    state = json.loads(journal.path.read_text())
    assert state["runs"]["0"]["prompt_id"] == queued
    assert history_markers(comfyui_server.base_url, journal.batch_id) == Counter(
        {f"{journal.batch_id}:0": 1, f"{journal.batch_id}:1": 1})


async def test_a_failing_run_is_recorded_and_tried_again_on_resume(comfyui_server: ComfyServer,
                                                                  tmp_path: Path) -> None:
    """A value ComfyUI refuses (seconds -1 < its minimum 0; no /object_info was given to catch it first) fails
    that run only: the others complete, metadata.csv and the sheet carry the error, and the next invocation
    tries the failed run again (attempt 2) without re-rendering the finished ones."""
    import io

    from comfy_worker.explore.batch import run_batch
    from comfy_worker.explore.batch_config import load_config
    from comfy_worker.explore.runners import LocalRunner

    config = write_batch(tmp_path, workflow=tiny_video(seconds=0.2), sampling_strategy="grid", parameters={
        "seconds": {"path": "nodes.4.inputs.seconds", "type": "values", "values": [0.2, -1.0, 0.3]}},
        output={"run_name_pattern": "{run_id:04d}"})
    cfg = load_config(config)
    first = await run_batch(cfg, LocalRunner(comfyui_server.base_url), out=io.StringIO())
    assert (first.complete, first.failed, first.exit_code) == (2, 1, 1)
    rows = read_csv(first.directory / "metadata.csv")
    assert [r["status"] for r in rows] == ["complete", "failed", "complete"]
    assert "smaller than min" in rows[1]["error"] and rows[1]["outputs"] == ""
    assert "ComfyUI rejected the workflow" in rows[1]["error"]
    assert "rejected the workflow" in (first.directory / "contact_sheet.html").read_text()
    batch_id = json.loads((first.directory / "progress.json").read_text())["batch_id"]
    before = history_markers(comfyui_server.base_url, batch_id)
    assert before == Counter({f"{batch_id}:0": 1, f"{batch_id}:2": 1})  # the refused prompt never ran

    out = io.StringIO()
    second = await run_batch(load_config(config), LocalRunner(comfyui_server.base_url), out=out)
    assert second.directory == first.directory and second.ran == 1
    assert "2 already done, 1 to run" in out.getvalue()
    rows = read_csv(second.directory / "metadata.csv")
    assert rows[1]["status"] == "failed" and rows[1]["attempt"] == "2"
    assert history_markers(comfyui_server.base_url, batch_id) == before
