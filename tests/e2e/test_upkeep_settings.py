"""Bad long-run settings stop the worker at start with one line naming the variable (the CLI in a subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_migrate_cli import cli


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MIN_FREE_DISK_GB": "-1"}, "MIN_FREE_DISK_GB"),
        ({"MIN_FREE_DISK_GB": "lots"}, "MIN_FREE_DISK_GB"),
        ({"COMFY_INPUT_DIR": "{tmp}/no/such/dir"}, "COMFY_INPUT_DIR"),
        ({"COMFY_OUTPUT_DIR": "{tmp}/no/such/dir"}, "COMFY_OUTPUT_DIR"),
    ],
)
def test_bad_settings_stop_the_worker_naming_the_variable(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    base = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/q.db",
        "COMFY_URL": "http://127.0.0.1:9",  # never reached: the settings are refused first
        "LOG_FORMAT": "json",
    }
    done = cli("--worker-id", "w-bad-settings", env={**base, **env}, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("comfy-worker:")]
    assert len(lines) == 1 and variable in lines[0], done.stderr
    assert "Traceback" not in done.stderr
