"""The README quickstart, run as written in a subprocess: a fresh directory, the embedded SQLite queue, local
storage, the CLI and the daemon (which launches the CPU ComfyUI itself). The README is the test input, so the
documentation cannot drift from what works."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.comfy_server import free_port
from tests.integration.engine.conftest import require_test_comfyui

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.comfyui


def quickstart_block() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- quickstart.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert m, "README.md lost its quickstart block"
    return m.group(1)


def test_readme_quickstart_completes_a_task_with_output_url(tmp_path: Path) -> None:
    require_test_comfyui()
    for name in (".venv", ".test-env", "examples"):  # a fresh directory that sees the installed pieces
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SUPABASE_", "COMFY_"))}
    env.update(COMFY_PORT=str(free_port()), LOG_FORMAT="json")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", quickstart_block()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    task_id = proc.stdout.splitlines()[0].strip()
    with sqlite3.connect(tmp_path / "comfy_worker.db") as db:
        status, output_url, result = db.execute(
            "SELECT status, output_url, result FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    assert status == "complete", proc.stderr[-4000:]
    assert f"{task_id}|complete|{output_url}" in proc.stdout  # the README's SELECT printed it
    image = Path(unquote(urlparse(output_url).path))
    assert image.is_file() and image.stat().st_size > 0 and image.suffix == ".png"
    assert tmp_path / "outputs" in image.parents
    assert "comfy-worker-1" in proc.stdout and "== queue ==" in proc.stdout  # comfy-worker status
    assert [o["kind"] for o in json.loads(result)["outputs"]] == ["image"]
