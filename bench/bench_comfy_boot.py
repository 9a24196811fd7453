"""How long a real ComfyUI 0.3.64 takes to boot, and what two levers outside ComfyUI's code buy.

A pod's first task waits for ComfyUI's boot (issue 24: on the H100 box 16-19 s even with every file in the page
cache; the rest of the cold overhead is loading). Three variants, each a copy of the test ComfyUI 0.3.64 tree run
with ``main.py --cpu --quick-test-for-ci`` (it boots fully, loads every node, and exits), timed from launch to exit:

* ``no .pyc``: the tree as unpacked from its tarball, with nothing compiled and nothing written
  (``PYTHONDONTWRITEBYTECODE=1``): a pod's first boot from an image that did not compile ComfyUI;
* ``compiled``: ``python -m compileall`` first, as docker/Dockerfile now does;
* ``compiled + --disable-api-nodes``: also without ComfyUI's paid-API nodes (``COMFY_ARGS``; a worker whose graphs
  use none of them may set it).

The variants alternate within each round (``--rounds``, default 5), so drift on this noisy machine hits all of
them; the report is each one's median and its ratio to ``no .pyc``, with a live line while it runs.

    .venv/bin/python bench/bench_comfy_boot.py [--rounds 5]

Needs the test ComfyUI 0.3.64 (scripts/install.sh). The page cache is warm here (no root to drop it): the figures
are the CPU part of the boot, which the GPU box's warm-cache boots show to be most of it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.comfy_server_0364 import comfy_0364_available, comfy_0364_paths

VARIANTS = ("no .pyc", "compiled", "compiled + --disable-api-nodes")


def boot(python: Path, tree: Path, extra: list[str]) -> float:
    """Seconds from launch to exit of one ``--quick-test-for-ci`` boot of ``tree``, writing no ``.pyc`` (so the
    bare tree stays bare from round to round)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([str(python), "main.py", "--cpu", "--quick-test-for-ci", *extra], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"ComfyUI exited {out.returncode} in {tree}:\n{out.stderr[-2000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if not comfy_0364_available():
        raise SystemExit("the test ComfyUI 0.3.64 is not installed: run bash scripts/install.sh")
    python, source = comfy_0364_paths()
    work = Path(tempfile.mkdtemp(prefix="cw-bench-boot-"))
    try:
        bare, compiled = work / "bare", work / "compiled"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "output", "temp", "input", "user")
        shutil.copytree(source, bare, ignore=ignore, symlinks=True)
        shutil.copytree(source, compiled, ignore=ignore, symlinks=True)
        subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", str(compiled)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        pyc = sum(1 for _ in compiled.rglob("*.pyc"))
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(a.rounds):
            for v in VARIANTS:
                print(f"\rround {r + 1}/{a.rounds}: {v:<32}", end="", file=sys.stderr, flush=True)
                tree = bare if v == "no .pyc" else compiled
                extra = ["--disable-api-nodes"] if "api" in v else []
                times[v].append(boot(python, tree, extra))
        print(file=sys.stderr)
        base = statistics.median(times[VARIANTS[0]])
        print(f"ComfyUI 0.3.64 boot to exit (--cpu --quick-test-for-ci), {a.rounds} rounds, {pyc} .pyc when compiled")
        print(f"{'variant':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'÷ no .pyc':>10}")
        for v in VARIANTS:
            med = statistics.median(times[v])
            print(f"{v:<32} {med:>9.2f} {min(times[v]):>7.2f} {max(times[v]):>7.2f} {med / base:>10.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
