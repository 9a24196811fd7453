"""The exploration commands as users type them (``cr-*`` console scripts and ``comfy-worker <command>``), in
subprocesses against the test ComfyUI, real Postgres and a daemon."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixture_files import OBJECT_INFO_0364
from tests.integration.daemon.conftest import Harness, harness  # noqa: F401 - fixture re-export
from tests.integration.engine.conftest import ComfyServer
from tests.integration.explore.workflows import tiny_video, write_batch

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


async def sh(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), "LOG_FORMAT": "json", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cr_run_streams_outputs_to_the_prompt_directory(comfyui_server: ComfyServer, tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text(json.dumps(tiny_video(seconds=0.5)))
    code, out, err = await sh(str(BIN / "cr-run"), "wf.json", "--server", comfyui_server.base_url, cwd=tmp_path)
    assert code == 0, err[-2000:]
    [line] = out.split()
    video = Path(line)
    assert video.is_file() and video.suffix == ".mp4" and video.parent.parent == tmp_path / "output"
    assert "nodes [" in err  # live progress
    code, out, err = await sh(str(BIN / "cr-run"), "missing.json", "--server", comfyui_server.base_url, cwd=tmp_path)
    assert code == 1 and "workflow file missing.json does not exist" in err


async def test_run_submit_wait_goes_through_the_queue(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    await harness.start_daemon("explore-run")
    (tmp_path / "wf.json").write_text(json.dumps(tiny_video(seconds=0.3)))
    env = {"DATABASE_URL": harness.dsn, "LOCAL_STORAGE_DIR": str(harness.storage_dir)}
    code, out, err = await sh(sys.executable, "-m", "comfy_worker", "run", "wf.json", "--submit", "--wait",
                              cwd=tmp_path, env=env)
    assert code == 0, err[-2000:]
    task_id, video = out.split()
    task = await harness.store.get_task(task_id)
    assert task.status == "complete" and task.worker_id == "explore-run"
    assert Path(video) == tmp_path / "output" / task_id / task.result["outputs"][0]["filename"]
    assert Path(video).read_bytes() == (harness.storage_dir / task.result["outputs"][0]["storage_path"]).read_bytes()


async def test_analyze_a_ui_export_then_batch_it(comfyui_server: ComfyServer, tmp_path: Path) -> None:
    """analyze converts a UI export (through engine.ui_to_api), saves its API form beside the template, and the
    template runs as a batch with no further edits."""
    ui = {
        "nodes": [
            {"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [64, 48, 1], "inputs": []},
            {"id": 2, "type": "EmptyImage", "mode": 0, "widgets_values": [64, 48, 1, 4227264], "inputs": []},
            {"id": 3, "type": "CWFakeSampler", "mode": 0, "widgets_values": [4, 7, "randomize", 0.8],
             "inputs": [{"name": "latent", "link": 1}, {"name": "image", "link": 2}]},
            {"id": 4, "type": "CWSaveVideoMP4", "mode": 0, "widgets_values": [8.0, "explore/ui"],
             "inputs": [{"name": "images", "link": 3}]},
        ],
        "links": [[1, 1, 0, 3, 0, "LATENT"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 1, 4, 0, "IMAGE"]],
    }
    (tmp_path / "ui.json").write_text(json.dumps(ui))
    code, out, err = await sh(str(BIN / "cr-analyze"), "ui.json", "-o", "explore.yaml", "--server",
                              comfyui_server.base_url, cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert "== seed (1) ==" in out and "== denoise (1) ==" in out
    api = json.loads((tmp_path / "ui.api.json").read_text())
    assert api["3"]["inputs"]["seed"] == 7 and api["3"]["inputs"]["latent"] == ["1", 0]
    cfg = yaml.safe_load((tmp_path / "explore.yaml").read_text())
    assert cfg["workflow_file"] == "ui.api.json" and set(cfg["parameters"]) == {"seed"}
    cfg["num_samples"] = 2
    (tmp_path / "explore.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = await sh(str(BIN / "cr-batch"), "explore.yaml", "--server", comfyui_server.base_url,
                              cwd=tmp_path)
    assert code == 0, err[-2000:]
    directory = Path(out.strip().splitlines()[-1])
    assert directory.parent == tmp_path / "output" and "2/2 complete" in err
    code, out, err = await sh(str(BIN / "cr-contact-sheet"), str(directory), "--inline", cwd=tmp_path)
    assert code == 0 and out.strip() == str(directory / "contact_sheet.html")
    assert "data:image/jpeg;base64," in (directory / "contact_sheet.html").read_text()


async def test_bad_batch_config_fails_before_anything_runs(comfyui_server: ComfyServer, tmp_path: Path) -> None:
    config = write_batch(tmp_path, parameters={
        "denoise": {"path": "nodes.3.inputs.denoise", "type": "continuous", "min": 0.9, "max": 0.1}})
    code, _out, err = await sh(str(BIN / "cr-batch"), str(config), "--server", comfyui_server.base_url,
                               cwd=tmp_path)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "comfy-worker: error: parameters.denoise.min: min 0.9 is greater than max 0.1")
    assert not (tmp_path / "output").exists()
    config = write_batch(tmp_path, sampling_strategy="grid", parameters={
        "frames": {"path": "nodes.3.inputs.frames", "type": "linear", "min": 2, "max": 6, "step": 2},
        "color": {"path": "nodes.2.inputs.color", "type": "values", "values": [1, 2, 3]}},
        output={"run_name_pattern": "{run_id:03d}_f{frames}"})
    code, out, err = await sh(str(BIN / "cr-batch"), str(config), "--dry-run", "--object-info", str(OBJECT_INFO_0364),
                              "--fleet", cwd=tmp_path)
    assert code == 0, err
    assert "grid: 3 frames x 3 color = 9 points" in err and err.strip().endswith("9 runs")
    assert out.splitlines()[0] == "run_id\tname\tframes\tcolor" and out.splitlines()[1] == "0\t000_f2\t2\t1"
