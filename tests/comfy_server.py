"""Start the real test ComfyUI (the older CPU server from scripts/setup_test_comfyui.sh) for tests.

Reusable by any test tier::

    from tests.comfy_server import start_test_comfyui, stop_test_comfyui, comfy_test_home
    proc, base_url = start_test_comfyui(free_port())

The server runs with ``--cpu``, this repo's tests/comfy_nodes as an extra custom-nodes folder, and its own
input / output / temp directories (under ``workdir``, default a fresh temp dir) so tests do not share files.
Its output goes to ``<workdir>/comfyui.log`` (a file, never an unread pipe).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODES_DIR = REPO / "tests" / "comfy_nodes"


def comfy_test_home() -> Path:
    return Path(os.environ.get("COMFY_TEST_HOME") or REPO / ".test-env")


def comfy_test_paths() -> tuple[Path, Path]:
    """(python, comfyui_dir) of the test installation."""
    home = comfy_test_home()
    return home / "venv" / "bin" / "python", home / "comfyui"


def comfy_test_available() -> bool:
    python, tree = comfy_test_paths()
    return python.exists() and (tree / "main.py").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def comfy_args(workdir: Path) -> list[str]:
    """The extra ComfyUI arguments the tests use (also usable as COMFY_ARGS for a supervisor)."""
    paths_yaml = workdir / "extra_model_paths.yaml"
    paths_yaml.write_text(f"comfy_worker_tests:\n    custom_nodes: {NODES_DIR}\n")
    return private_args(workdir, paths_yaml)


def private_args(workdir: Path, paths_yaml: Path) -> list[str]:
    """``--cpu``, ``paths_yaml`` as the extra model paths, and input / output / temp folders of the server's own
    under ``workdir`` (made here)."""
    for sub in ("input", "output", "temp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    return [
        "--cpu",
        "--extra-model-paths-config",
        str(paths_yaml),
        "--input-directory",
        str(workdir / "input"),
        "--output-directory",
        str(workdir / "output"),
        "--temp-directory",
        str(workdir),  # ComfyUI appends "temp"
    ]


def wait_ready(base_url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"test ComfyUI exited with {proc.returncode} during start-up:\n{tail}")
        try:
            with urllib.request.urlopen(f"{base_url}/system_stats", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"test ComfyUI at {base_url} not ready within {timeout_s} s")


def start_test_comfyui(
    port: int, *, workdir: Path | None = None, timeout_s: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the test ComfyUI on 127.0.0.1:port and wait until /system_stats answers."""
    python, tree = comfy_test_paths()
    if not comfy_test_available():
        raise RuntimeError(f"no test ComfyUI in {comfy_test_home()}: run scripts/setup_test_comfyui.sh")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cw-comfy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return launch_comfyui(python, tree, port, comfy_args(workdir), workdir, timeout_s)


def launch_comfyui(
    python: Path, tree: Path, port: int, args: list[str], workdir: Path, timeout_s: float
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``tree/main.py`` with ``python`` on 127.0.0.1:port (log in ``workdir/comfyui.log``) until ready."""
    log = workdir / "comfyui.log"
    cmd = [str(python), "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch", *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=tree, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc, timeout_s, log)
    except BaseException:
        stop_test_comfyui(proc)
        raise
    proc.workdir = workdir  # type: ignore[attr-defined]
    return proc, base_url


def stop_test_comfyui(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def remove_workdir(proc: subprocess.Popen[bytes]) -> None:
    workdir = getattr(proc, "workdir", None)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
