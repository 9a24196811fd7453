"""bench/gpu/bench_engines_gpu.py --dry-run: everything that needs no GPU runs here (the task params checked
against their contracts, the holder checkout, the daemon's environment), and the holder — the process that
holds and releases memory the way Wan2GP does — runs on the CPU through the real child: load, steps, free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfy_server import comfy_test_available, comfy_test_paths

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(not comfy_test_available(), reason="needs the test ComfyUI's python (it has torch)")
def test_the_gpu_script_builds_everything_and_stops_before_cuda(tmp_path: Path) -> None:
    python, _tree = comfy_test_paths()
    r = subprocess.run(
        [sys.executable, "bench/gpu/bench_engines_gpu.py", "--dry-run", "--rounds", "2", "--holder-python",
         str(python)],
        cwd=REPO, env={**os.environ, "GPU_WORK": str(tmp_path), "OUT": str(tmp_path / "out")},
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "bench: dry run: stopped before CUDA" in r.stdout
    plan = json.loads((tmp_path / "out" / "engines_plan.json").read_text())
    assert [t for t, _ in plan["tasks"]] == ["comfyui_ti2v", "t2v", "comfyui_ti2v", "t2v"]
    check = plan["holder_cpu_check"]
    assert check["steps"] == [1, 2, 3] and check["files"] and check["model_after_free"] is None
    assert check["stats"]["model"] == "t2v" and check["stats"]["steps"] == 3
    holder = tmp_path / "wan2gp-holder"
    assert (holder / "wgp.py").is_file() and (holder / "shared" / "api.py").is_file()
