"""bench/gpu/comfy_gc_probe: runs a script (ComfyUI's main.py on the GPU machine) unchanged as ``__main__`` with
its arguments, and prints slow garbage collections to stderr, where the worker logs ComfyUI's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "bench" / "gpu" / "comfy_gc_probe" / "python"


def test_the_script_runs_as_main_with_its_arguments_and_slow_collections_are_printed(tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text(
        "import gc, sys, os\n"
        "assert __name__ == '__main__'\n"
        "print('argv', sys.argv[1:], os.path.dirname(os.path.abspath(__file__)) in sys.path)\n"
        "class Node:\n    pass\n"
        "keep = [Node() for _ in range(300_000)]\n"  # a heap large enough for a full collection to be seen
        "gc.collect()\n"
    )
    env = {**os.environ, "GC_PROBE_PYTHON": sys.executable, "GC_PROBE_MIN_S": "0"}
    run = subprocess.run([str(PROBE), "main.py", "--listen", "127.0.0.1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert run.stdout.strip() == "argv ['--listen', '127.0.0.1'] True"
    assert "gc_probe: generation 2 took" in run.stderr
