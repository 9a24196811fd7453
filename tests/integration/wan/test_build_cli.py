"""`comfy-worker build TYPE --set k=v [--out F | --submit | --wait]` in a subprocess: prints the graph offline,
refuses bad params naming the key, and queues a task whose local media went to storage first."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from comfy_worker.models import TaskStatus
from tests.integration.daemon.conftest import Harness
from tests.integration.wan.conftest import ffmpeg_media

REPO = Path(__file__).resolve().parents[3]


async def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", *args,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_build_prints_the_graph(tmp_path: Path) -> None:
    code, out, err = await cli(
        "build", "comfyui_i2v", "--set", "image=start.png", "--set", "prompt=a cat on a sofa",
        "--set", "num_frames=80", "--set", "width=832", "--set", "height=480", "--set", "use_lora=true",
    )  # fmt: skip
    assert code == 0, err
    graph = json.loads(out)
    by_type = {n["class_type"]: n for n in graph.values()}
    assert by_type["LoadImage"]["inputs"] == {"image": "start.png"}
    assert by_type["WanImageToVideo"]["inputs"]["length"] == 81
    assert by_type["WanImageToVideo"]["inputs"]["width"] == 832
    assert "note: num_frames 80 rounded to 81" in err and "note: seed drawn at random" in err
    code, out, err = await cli("build", "comfyui_t2v", "--set", "seed=3", "--out", str(tmp_path / "g.json"))
    assert code == 0 and out == "" and json.loads((tmp_path / "g.json").read_text())


async def test_build_refuses_bad_params_naming_the_key() -> None:
    code, _out, err = await cli("build", "comfyui_t2v", "--set", "guidance=7")
    assert code == 1 and "comfyui_t2v: params.guidance is not accepted; accepted keys: prompt" in err
    code, _out, err = await cli("build", "comfyui_t2v", "--set", "steps=0")
    assert code == 1 and "params.steps is out of range: 0 (allowed 1 to 200)" in err
    code, _out, err = await cli("build", "comfyui_t2v", "--set", "steps")
    assert code == 1 and "--set 'steps': expected KEY=VALUE" in err


@pytest.mark.comfyui
async def test_build_submit_uploads_media_and_wait_shows_the_failure(
    pg_dsn: str, harness64: Harness, tmp_path: Path
) -> None:
    h, store = harness64, harness64.store
    await h.start_daemon()
    image = ffmpeg_media(tmp_path / "start.png", "image")
    env = {"DATABASE_URL": pg_dsn, "LOCAL_STORAGE_DIR": str(h.storage_dir)}
    code, out, err = await cli(
        "build", "comfyui_i2v", "--set", f"image={image}", "--set", "high_noise_model=not_here.safetensors",
        "--wait", env=env,
    )  # fmt: skip
    task_id = out.split()[0]
    task = await store.get_task(task_id)
    assert code == 1 and task.status is TaskStatus.FAILED and task.attempts == 1
    assert task.params["image"] == {"storage_path": f"inputs/{task_id}/start.png"}
    assert (h.storage_dir / "inputs" / task_id / "start.png").read_bytes() == image.read_bytes()
    assert "not_here.safetensors is not installed" in err and "models/diffusion_models/" in err
