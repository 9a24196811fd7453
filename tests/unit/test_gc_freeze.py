"""The garbage-collection freezer that runs inside ComfyUI (COMFY_GC_FREEZE=true;
comfy_worker/engine/comfy_nodes/comfy_worker_nodes/gc_freeze.py): its policy with a fake clock, and the real
``gc`` in a fresh interpreter (objects frozen after a slow full collection, unfrozen after the refresh time)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Callable
from types import ModuleType

from comfy_worker.engine.frames import NODES_DIR

GC_FREEZE = NODES_DIR / "comfy_worker_nodes" / "gc_freeze.py"


def load() -> ModuleType:
    """The module as ComfyUI's python sees it: a plain file, nothing of the worker's imported."""
    spec = importlib.util.spec_from_file_location("cw_gc_freeze_under_test", GC_FREEZE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Fake:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []
        self.deferred: list[Callable[[], None]] = []
        self.said: list[str] = []

    def run_deferred(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()


def freezer(fake: Fake, **kw: float):
    return load().GcFreezer(
        clock=lambda: fake.now, defer=fake.deferred.append, freeze=lambda: fake.calls.append("freeze"),
        unfreeze=lambda: fake.calls.append("unfreeze"), frozen_count=lambda: 123, say=fake.said.append, **kw,
    )  # fmt: skip


def collect(f, fake: Fake, generation: int, seconds: float) -> None:
    f("start", {"generation": generation})
    fake.now += seconds
    f("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def test_freezes_after_a_slow_full_collection_only_and_after_it() -> None:
    fake = Fake()
    f = freezer(fake, min_s=0.3, refresh_s=600)
    collect(f, fake, 2, 0.1)  # fast full collection
    collect(f, fake, 1, 2.0)  # slow, but not a full one
    assert fake.deferred == [] and fake.calls == []
    collect(f, fake, 2, 1.5)
    assert fake.calls == []  # not inside the collection: deferred
    collect(f, fake, 0, 0.01)  # a collection before the deferred freeze ran does not ask twice
    fake.run_deferred()
    assert fake.calls == ["freeze"] and f.frozen_at == fake.now
    assert fake.said == ["froze 123 objects after a full collection of 1.500 s"]


def test_unfreezes_once_the_refresh_time_has_passed_then_freezes_again() -> None:
    fake = Fake()
    f = freezer(fake, min_s=0.3, refresh_s=600)
    collect(f, fake, 2, 1.5)
    fake.run_deferred()
    fake.now += 599
    collect(f, fake, 2, 0.1)
    fake.run_deferred()
    assert fake.calls == ["freeze"]
    fake.now += 2
    collect(f, fake, 0, 0.01)  # any collection after refresh_s schedules the unfreeze
    fake.run_deferred()
    assert fake.calls == ["freeze", "unfreeze"] and f.frozen_at is None
    collect(f, fake, 2, 1.4)  # the full walk that frees what became garbage: slow, so frozen again
    fake.run_deferred()
    assert fake.calls == ["freeze", "unfreeze", "freeze"]


def test_install_needs_the_variable() -> None:
    assert load().install_from_env({}) is None


def test_real_gc_objects_are_frozen_after_a_slow_collection_and_unfrozen_at_refresh() -> None:
    script = textwrap.dedent(f"""
        import gc, importlib.util, threading, time
        spec = importlib.util.spec_from_file_location("g", {str(GC_FREEZE)!r})
        g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)
        f = g.install_from_env({{"COMFY_WORKER_GC_FREEZE": "1", "COMFY_WORKER_GC_FREEZE_MIN_S": "0",
                                 "COMFY_WORKER_GC_REFRESH_S": "0.2"}})
        assert g.install_from_env({{"COMFY_WORKER_GC_FREEZE": "1"}}) is None  # once per process
        keep = [[i] for i in range(100000)]
        gc.collect()
        deadline = time.monotonic() + 10
        while gc.get_freeze_count() < 100000:
            assert time.monotonic() < deadline, "never froze"
            time.sleep(0.01)
        print("frozen", gc.get_freeze_count() >= 100000)
        time.sleep(0.25)
        gc.collect(0)  # a collection after the refresh time schedules the unfreeze
        while gc.get_freeze_count() != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        print("unfrozen", gc.get_freeze_count() == 0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["frozen", "True", "unfrozen", "True"]
    assert "comfy_worker_gc: on:" in out.stderr and "comfy_worker_gc: froze" in out.stderr
    assert "comfy_worker_gc: unfroze after 0.2 s" in out.stderr
