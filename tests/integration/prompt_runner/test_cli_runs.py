"""``comfy-worker prompt-runner`` without --dry-run: --submit to the queue, and local runs with --resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from comfy_worker.handlers.prompt_runner.join import count_frames
from comfy_worker.store.postgres import PostgresStore
from tests.integration.engine.conftest import ComfyServer
from tests.integration.prompt_runner.conftest import CHAIN_PROFILE, comfy_history, latent_saves

REPO = Path(__file__).resolve().parents[3]


def prompt_file(directory: Path, name: str, frames: int) -> Path:
    path = directory / f"{name}.txt"
    path.write_text(f"{name}\n\n{frames}\n\na green circle\nslowly growing\n\nblurry\n", encoding="utf-8")
    return path


async def cli(*argv: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", "prompt-runner", *argv,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode or 0, out.decode()


async def test_submit_enqueues_one_task_per_prompt_file(pg_dsn: str, tmp_path: Path) -> None:
    files = [prompt_file(tmp_path, f"video_{i}", 250 + i) for i in range(2)]
    code, out = await cli(
        "--submit", "--prompt-dir", str(tmp_path), "--frames-per-chunk", "50", "--max-retries", "1",
        "--overlap", "2", env={"DATABASE_URL": pg_dsn, "LOG_FORMAT": "json"},
    )  # fmt: skip
    assert code == 0, out
    lines = [line.split() for line in out.splitlines() if line and not line.startswith("{")]
    assert [name for _tid, name in lines] == ["video_0", "video_1"]
    store = PostgresStore(pg_dsn)
    await store.connect()
    try:
        for (tid, name), f in zip(lines, files, strict=True):
            task = await store.get_task(tid)
            assert task.task_type == "prompt_runner"
            assert task.params == {
                "video_name": name,
                "total_frames": 250 + files.index(f),
                "positive_prompt": "a green circle\nslowly growing",
                "negative_prompt": "blurry",
                "frames_per_chunk": 50,
                "max_retries": 1,
                "keep_intermediate": False,
                "overrides": {"overlap": 2},
            }
    finally:
        await store.close()


async def test_submit_refuses_a_bad_profile_before_enqueueing(pg_dsn: str, tmp_path: Path) -> None:
    prompt_file(tmp_path, "video_x", 30)
    code, out = await cli(
        "--submit", "--prompt-dir", str(tmp_path), "--profile", "no_such_profile", env={"DATABASE_URL": pg_dsn}
    )
    assert code == 1 and "no_such_profile" in out, out


def slow_profile(tmp_path: Path, delay_s: float) -> Path:
    """The CPU chain profile with every sampler call taking ``delay_s`` (so a run can be interrupted)."""
    workflow = json.loads((CHAIN_PROFILE.parent / "cw_test_chain.json").read_text())
    workflow["54"]["inputs"]["delay_s"] = delay_s
    (tmp_path / "slow.json").write_text(json.dumps(workflow))
    profile = yaml.safe_load(CHAIN_PROFILE.read_text())
    profile["base_workflow"] = "slow.json"
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.mark.comfyui
async def test_local_run_interrupted_with_ctrl_c_resumes_where_it_stopped(
    comfyui_server: ComfyServer, tmp_path: Path
) -> None:
    name = f"cw_local_{uuid.uuid4().hex[:8]}"
    pf = prompt_file(tmp_path, name, 18)  # 2 chunks of 9
    out_dir = tmp_path / "out"
    env = {"COMFY_URL": comfyui_server.base_url, "COMFY_OUTPUT_DIR": str(comfyui_server.output_dir),
           "LOG_FORMAT": "json", "DATABASE_URL": ""}  # fmt: skip
    args = ["--profile", str(slow_profile(tmp_path, 0.8)), "--output-dir", str(out_dir), "--no-upload"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", "prompt-runner", "--prompt-file", str(pf), "--frames-per-chunk", "9",
        *args, env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    state_file = out_dir / "state" / f"{name}.json"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        try:
            completed = json.loads(state_file.read_text())["checkpoint"]["completed"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            completed = []
        if completed:
            break
        assert proc.returncode is None and loop.time() < deadline, "no step completed"
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, out.decode()[-3000:]
    assert f"--resume {name}" in out.decode()
    state = json.loads(state_file.read_text())
    assert state["status"] == "interrupted"
    done_at_interrupt = state["checkpoint"]["completed"]
    prompts_at_interrupt = state["checkpoint"]["prompts"]
    assert done_at_interrupt and len(done_at_interrupt) < 4

    code, out2 = await cli("--resume", name, *args, env=env)
    assert code == 0, out2[-3000:]
    assert f"resuming after {len(done_at_interrupt)} completed steps" in out2
    state = json.loads(state_file.read_text())
    assert state["status"] == "complete" and len(state["checkpoint"]["completed"]) == 4
    final = out_dir / name / "final" / f"{name}.mp4"
    assert await count_frames(final, decode=True) == 18
    for job_id in done_at_interrupt:  # not run again
        assert state["checkpoint"]["prompts"][job_id] == prompts_at_interrupt[job_id]
        assert len(prompts_at_interrupt[job_id]) == 1
    saves = latent_saves(await comfy_history(comfyui_server.base_url), name)
    assert len(saves["chunk_001"]) == 1, saves
    # intermediates removed from the output dir; the final video and the state stay
    left = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and ".work" not in p.parts)
    assert left == [f"{name}/final/{name}.mp4", f"state/{name}.json"], left


@pytest.mark.comfyui
async def test_local_run_takes_frames_per_chunk_from_the_prompt_file_over_the_profile_and_joins_exactly(
    comfyui_server: ComfyServer, tmp_path: Path
) -> None:
    """The profile says 13 frames per chunk, the prompt file 9 (and no flag): 9 wins. 22 frames is not 4k+1: the
    last chunk covers 4, renders 5, and the local run's video has exactly 22 frames (ffprobe counts them)."""
    name = f"cw_local_{uuid.uuid4().hex[:8]}"
    pf = tmp_path / f"{name}.txt"
    pf.write_text(f"{name}\n\n22\nframes_per_chunk: 9\n\na green circle\n\nblurry\n", encoding="utf-8")
    profile = yaml.safe_load(CHAIN_PROFILE.read_text())
    profile["defaults"]["frames_per_chunk"] = 13
    profile["base_workflow"] = str(CHAIN_PROFILE.parent / profile["base_workflow"])
    (tmp_path / "p13.yaml").write_text(yaml.safe_dump(profile))
    out_dir = tmp_path / "out"
    env = {"COMFY_URL": comfyui_server.base_url, "COMFY_OUTPUT_DIR": str(comfyui_server.output_dir),
           "LOG_FORMAT": "json", "DATABASE_URL": ""}  # fmt: skip
    code, out = await cli(
        "--prompt-file", str(pf), "--profile", str(tmp_path / "p13.yaml"), "--output-dir", str(out_dir),
        "--no-upload", env=env,
    )  # fmt: skip
    assert code == 0, out[-3000:]
    state = json.loads((out_dir / "state" / f"{name}.json").read_text())
    plan = state["checkpoint"]["plan"]
    assert plan["frames_per_chunk"] == 9 and plan["chunks"] == 3
    lows = [j for j in plan["jobs"] if j["job_type"] == "low_noise_render"]
    assert [(j["frames_to_render"], j["frames_kept"]) for j in lows] == [(9, 9), (9, 9), (5, 4)]
    final = out_dir / name / "final" / f"{name}.mp4"
    assert await count_frames(final, decode=True) == 22
    assert f"OK {name}: {final} (22 frames)" in out
