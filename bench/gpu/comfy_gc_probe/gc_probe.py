"""Run ComfyUI's ``main.py`` unchanged, printing every garbage collection that takes 50 ms or more to stderr.

Why: with ``compile: true`` the GPU runs showed 1.1-1.3 s between ComfyUI's "Prompt executed" line and the
daemon's upload, against 0.3 s without (docs/benchmarks-gpu.md, "Session 8"). ComfyUI's prompt worker calls
``gc.collect()`` after a prompt (at most every 10 s) while holding the GIL, so its HTTP server cannot answer the
daemon's ``/view`` meanwhile, and the next prompt cannot start; a heap grown by torch.compile's graphs would make
that collection slow. The worker logs ComfyUI's stderr as ``comfyui_output`` lines, so these land in its log:

    gc_probe: generation 2 took 1.104 s, 0 collected, 0 uncollectable

Used by ``GC_PROBE=1 python3 bench/gpu/bench_wan_gpu.py <phase>`` (COMFY_PYTHON points at ``python`` beside this).

``GC_PROBE_FREEZE=1`` (the ``gcfreeze14`` phase): after a full collection that took GC_FREEZE_MIN_S (0.3 s) or more,
``gc.freeze()`` moves every object still alive (the loaded models, torch.compile's graphs) out of the collector's
reach, so the next full collections only walk what is new. Frozen objects are still freed by reference counting;
a reference cycle among them that later becomes garbage is never collected (the remedy's cost, not measured here).
"""

from __future__ import annotations

import gc
import os
import queue
import runpy
import sys
import threading
import time
from typing import Any

THRESHOLD_S = float(os.environ.get("GC_PROBE_MIN_S", "0.05"))
FREEZE = os.environ.get("GC_PROBE_FREEZE") == "1"
FREEZE_MIN_S = float(os.environ.get("GC_FREEZE_MIN_S", "0.3"))
_started = [0.0]


_todo: queue.SimpleQueue[Any] = queue.SimpleQueue()  # reentrant: safe from a gc callback


def _run() -> None:
    while True:
        _todo.get()()


def _freeze() -> None:
    gc.freeze()
    print(f"gc_probe: froze, {gc.get_freeze_count()} objects now frozen", file=sys.stderr, flush=True)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    if took >= THRESHOLD_S:
        print(f"gc_probe: generation {info['generation']} took {took:.3f} s, {info['collected']} collected, "
              f"{info['uncollectable']} uncollectable", file=sys.stderr, flush=True)  # fmt: skip
    if FREEZE and info["generation"] == 2 and took >= FREEZE_MIN_S:
        _todo.put(_freeze)  # done by _run after the collection: a gc callback must not start threads or take locks


def main() -> None:
    script = os.path.abspath(sys.argv[1])  # ComfyUI's main.py, as the supervisor passes it
    sys.argv = [script, *sys.argv[2:]]
    sys.path.insert(0, os.path.dirname(script))
    if FREEZE:
        threading.Thread(target=_run, name="gc_probe", daemon=True).start()
    gc.callbacks.append(_on_gc)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
