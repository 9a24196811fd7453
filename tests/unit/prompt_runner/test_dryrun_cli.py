from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from comfy_worker.config import load_settings
from comfy_worker.handlers.prompt_runner import cli
from comfy_worker.handlers.prompt_runner.dryrun import dry_run
from comfy_worker.handlers.prompt_runner.profile import load_profile
from comfy_worker.handlers.prompt_runner.prompt_file import parse_file

from .conftest import OBJECT_INFO, PROMPT_FILES, REPO

SUNSET = PROMPT_FILES / "sunset_beach.txt"
_watching: list[list[tuple]] = []
_NETWORK_EVENTS = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"}


def _audit(event: str, args: tuple) -> None:
    if not _watching:
        return
    if event == "socket.__new__":
        family = args[1] if len(args) > 1 else None
        if family not in (socket.AF_UNIX, -1):  # asyncio's self-pipe is an AF_UNIX socketpair
            _watching[-1].append((event, args))
    elif event in _NETWORK_EVENTS or event == "subprocess.Popen":
        _watching[-1].append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only while a test watches


@pytest.fixture
def no_network():
    seen: list[tuple] = []
    _watching.append(seen)
    yield seen
    _watching.remove(seen)
    assert seen == [], f"network or subprocess activity during a dry run: {seen[:5]}"


def run(argv: list[str]) -> int:
    """The subcommand in-process (cli.main would also reconfigure logging onto pytest's capture stream)."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return asyncio.run(cli.run_cli(parser.parse_args(argv), load_settings(dotenv=None)))


def test_the_audit_hook_can_fail():
    seen: list[tuple] = []
    _watching.append(seen)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.close()
    finally:
        _watching.remove(seen)
    assert seen and seen[0][0] == "socket.__new__"


def test_dry_run_writes_the_documented_layout(tmp_path, monkeypatch, no_network):
    spec = parse_file(SUNSET)
    profile = load_profile()
    monkeypatch.chdir(tmp_path)
    result = dry_run(
        [spec], profile, now=lambda: datetime(2025, 8, 11, 11, 20, 3), object_info=json.loads(OBJECT_INFO.read_text())
    )
    root = tmp_path / "temp_dry_run_20250811_112003"
    assert result.run_dir.resolve() == root
    names = sorted(p.name for p in (root / "workflows").iterdir())
    expected = [f"workflow_{n:03d}_{'high_noise_render' if n % 2 else 'low_noise_render'}.json" for n in range(1, 11)]
    expected += [f"workflow_{n:03d}_combine.json" for n in range(11, 16)]
    assert names == sorted(expected)
    doc = json.loads((root / "workflows" / "workflow_002_low_noise_render.json").read_text())
    assert set(doc) == {"workflow_id", "timestamp", "job_info", "workflow", "original_nodes_count",
                        "modifications_applied"}  # fmt: skip
    assert doc["workflow_id"] == 2 and doc["original_nodes_count"] == 32
    info = doc["job_info"]
    assert {"type", "job_id", "job_number", "video_name", "modifications"} <= set(info)
    assert (info["type"], info["job_number"], info["video_name"]) == ("low_noise_render", 2, "sunset_beach")
    assert doc["modifications_applied"] == len(info["modifications"]) > 0
    assert doc["workflow"]["338"]["inputs"]["folder_path"].endswith("sunset_beach/latents/chunk_001")
    render = json.loads((root / "render_jobs" / "render_jobs_112003.json").read_text())
    combine = json.loads((root / "combine_jobs" / "combine_jobs_112003.json").read_text())
    assert render["total_jobs"] == 10 and combine["total_jobs"] == 5
    assert render["metadata"]["total_frames"] == 500 and render["metadata"]["frames_per_chunk"] == 101
    for job in render["jobs"] + combine["jobs"]:
        assert {"job_id", "job_number", "job_type", "frames_to_render", "start_frame", "prompts",
                "latent_input_path", "reference_image_path"} <= set(job)  # fmt: skip
    assert [j["start_frame"] for j in render["jobs"]][::2] == [0, 101, 202, 303, 404]
    state = json.loads((root / "state" / "sunset_beach.json").read_text())
    assert state["plan"]["chunks"] == 5 and state["completed_jobs"] == []


def test_cli_dry_run_in_process(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "dry"
    monkeypatch.setenv("DRY_RUN_TEMP_DIR", str(out_dir))
    code = run(["--dry-run", "--prompt-file", str(SUNSET), "--object-info", str(OBJECT_INFO),
                     "--log-level", "warning"])  # fmt: skip
    assert code == 0
    assert len(list((out_dir / "workflows").glob("*.json"))) == 15
    assert "sunset_beach: 500 frames, 5 chunks" in capsys.readouterr().out


def test_dry_run_env_and_several_prompt_files(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRY_RUN", "true")
    monkeypatch.setenv("DRY_RUN_TEMP_DIR", str(tmp_path / "dry"))
    assert run(["--prompt-dir", str(PROMPT_FILES), "--frames-per-chunk", "49", "--log-level", "error"]) == 0
    city = list((tmp_path / "dry" / "city_rain" / "workflows").glob("*.json"))
    assert len(city) == 4 * 2 + 4  # ceil(150 / 49) = 4 chunks
    assert (tmp_path / "dry" / "sunset_beach" / "state" / "sunset_beach.json").is_file()


def test_validate_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["--validate-only", "--prompt-dir", str(PROMPT_FILES)]) == 0
    assert capsys.readouterr().out.count("OK ") == 3  # profile + two files
    bad = tmp_path / "prompts"
    bad.mkdir()
    (bad / "good.txt").write_text(SUNSET.read_text())
    (bad / "bad.txt").write_text("x\n\nlots\n\np\n\nn\n")
    assert run(["--validate-only", "--prompt-dir", str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"ERROR {bad / 'bad.txt'}, line 3: total frames must be a positive integer" in captured.err
    assert "OK " in captured.out and "ERROR" not in captured.out  # the report on stdout, problems on stderr
    assert run(["--validate-only", "--prompt-dir", str(PROMPT_FILES), "--profile", "nope"]) == 1


def test_real_run_without_comfy_output_dir_fails_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ("DRY_RUN", "COMFY_OUTPUT_DIR", "COMFY_PATH", "COMFY_URL"):
        monkeypatch.delenv(var, raising=False)
    assert run(["--prompt-file", str(SUNSET)]) == 1
    assert "COMFY_OUTPUT_DIR" in capsys.readouterr().err


def test_module_runs_as_a_script(tmp_path):
    env = {**os.environ, "DRY_RUN_TEMP_DIR": str(tmp_path / "out")}
    proc = subprocess.run(
        [sys.executable, "-m", "comfy_worker.handlers.prompt_runner.cli", "--dry-run", "--prompt-file", str(SUNSET)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list(Path(tmp_path / "out" / "workflows").glob("workflow_*_combine.json"))) == 5
    assert REPO.is_dir()
