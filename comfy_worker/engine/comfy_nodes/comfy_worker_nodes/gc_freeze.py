"""Garbage-collection freezing for ComfyUI's process (COMFY_GC_FREEZE=true; runs inside ComfyUI, stdlib only).

ComfyUI calls ``gc.collect()`` after a prompt (at most every 10 s). Once models are loaded and compiled, that full
collection walks millions of live objects: 1.3-1.9 s on the GPU machine, holding the GIL while the next prompt,
already queued, waits (docs/benchmarks-gpu.md, "Session 9": the gap between prompts 1.35 s → 0.12 s with this).

Policy (:class:`GcFreezer`, a ``gc.callbacks`` hook):

- after a full (generation 2) collection that took ``min_s`` or more, ``gc.freeze()``: everything alive right after a
  collection moves to the permanent generation, which later collections skip. Frozen objects are still freed by
  reference counting;
- a reference cycle among frozen objects that becomes garbage (a model ComfyUI unloads, say) would never be
  collected, so every ``refresh_s`` after a freeze, ``gc.unfreeze()``: the next full collection walks everything
  again, frees such cycles, is slow, and freezes again. Memory held by frozen garbage is bounded by what becomes
  garbage in ``refresh_s``; the price is one slow collection per ``refresh_s``.

Both actions run just after the collection that triggered them, never inside it: the callback only puts them on a
``queue.SimpleQueue`` (reentrant: safe wherever a collection starts, even under a lock that thread holds), and one
daemon thread, started at install, does them. Each is printed to stderr (the worker logs ComfyUI's output as
``comfyui_output``). Settings, from ComfyUI's environment:
``COMFY_WORKER_GC_FREEZE`` (1: on), ``COMFY_WORKER_GC_FREEZE_MIN_S`` (0.3), ``COMFY_WORKER_GC_REFRESH_S`` (600).
"""

from __future__ import annotations

import gc
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any


class _Runner:
    """One daemon thread running what gc callbacks hand it (they must not start threads or take locks)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="comfy_worker_gc", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.queue.get()()


def _say(text: str) -> None:
    print(f"comfy_worker_gc: {text}", file=sys.stderr, flush=True)


class GcFreezer:
    def __init__(
        self,
        min_s: float = 0.3,
        refresh_s: float = 600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        defer: Callable[[Callable[[], None]], None] | None = None,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        frozen_count: Callable[[], int] = gc.get_freeze_count,
        say: Callable[[str], None] = _say,
    ) -> None:
        self.min_s, self.refresh_s = min_s, refresh_s
        self._clock = clock
        self._defer = defer if defer is not None else _Runner().queue.put
        self._freeze, self._unfreeze, self._frozen_count, self._say = freeze, unfreeze, frozen_count, say
        self._started = 0.0
        self.frozen_at: float | None = None
        self._pending = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = self._clock()
        if phase == "start":
            self._started = now
            return
        if self._pending:
            return
        took = now - self._started
        if self.frozen_at is not None and now - self.frozen_at >= self.refresh_s:
            self._pending = True
            self._defer(self._refresh)
        elif info.get("generation") == 2 and took >= self.min_s:
            self._pending = True
            self._defer(lambda: self._do_freeze(took))

    def _do_freeze(self, took: float) -> None:
        self._freeze()
        self.frozen_at = self._clock()
        self._pending = False
        self._say(f"froze {self._frozen_count()} objects after a full collection of {took:.3f} s")

    def _refresh(self) -> None:
        self._unfreeze()
        self.frozen_at = None
        self._pending = False
        self._say(f"unfroze after {self.refresh_s:g} s: the next full collection frees what became garbage")


def install_from_env(env: Mapping[str, str]) -> GcFreezer | None:
    """Hook a GcFreezer into ``gc.callbacks`` when ``COMFY_WORKER_GC_FREEZE`` is 1 (once per process)."""
    if env.get("COMFY_WORKER_GC_FREEZE") != "1":
        return None
    if any(isinstance(cb, GcFreezer) for cb in gc.callbacks):
        return None
    freezer = GcFreezer(
        float(env.get("COMFY_WORKER_GC_FREEZE_MIN_S", "0.3")), float(env.get("COMFY_WORKER_GC_REFRESH_S", "600"))
    )
    gc.callbacks.append(freezer)
    _say(f"on: freeze after a full collection of {freezer.min_s:g} s or more, refresh every {freezer.refresh_s:g} s")
    return freezer
