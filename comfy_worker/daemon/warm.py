"""Warm start: a new worker's first task should not pay for reading models from disk and loading them.

Two opt-in parts (README "Performance"):

* **Prefetch** (``WARM_PREFETCH=true``): while ComfyUI boots, the model files this worker will need are read
  into the OS page cache by ``WARM_PREFETCH_STREAMS`` parallel readers, in 64 MiB pieces (so one large file is
  read by several streams at once: what a network volume needs to reach its throughput). Which files:
  ``WARM_MODELS`` when set; else the ``MODELS_GROUPS`` entries of ``MODELS_MANIFEST``; else the files the
  builders' default graphs load for the ``comfyui_*`` task types this worker serves. Bounded by free RAM: files
  are taken in that order while their total stays within ``WARM_PREFETCH_RAM_FRACTION`` of ``MemAvailable``
  (``/proc/meminfo``); the rest are skipped, by name, in the log. ``WARM_PREFETCH_START=torch``: the readers
  wait until the ComfyUI this worker launches has imported torch (its ``Total VRAM`` line; at the latest when it
  answers) — on a local disk, model reads during that import starve its page faults (an H100 box: the import
  took 12.5 s instead of 5.1 s, and the boot 24.9 s instead of 16.7 s). ``launch`` (default) reads at once.
  Choosing (it looks at each file) and reading run in threads: neither blocks start-up or a claim. Each model
  file is looked at once: the warm-up's check for absent models reuses what the choice found.
* **Warm-up** (``WARM_UP=true``): once the worker is registered and no task is waiting, one tiny prompt per
  served ``comfyui_*`` type (64x64, one frame, the fewest steps; the type's default models) makes ComfyUI load
  those models into VRAM. It never delays a task: it is skipped when a task already waits, and a claim while it
  runs interrupts it (ComfyUI keeps what it has loaded; the task's own prompt would load the same models). Nor
  does it delay a shutdown: a stop request (SIGTERM, drain, idle exit), or the warm-up being cancelled,
  interrupts its prompt in ComfyUI (deleted from the queue, or ``/interrupt`` while it runs), so the GPU is not
  left computing a prompt nobody waits for (an attached ComfyUI outlives the worker).

A :class:`WarmStart` belongs to the daemon (``core.py``): ``start_prefetch()`` before the engines start,
``warm_up()`` as a background task beside the claim loop, ``claimed()`` from the claim loop, ``shutdown()`` when a
stop is requested, ``stop()`` at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import tempfile
import threading
import time
import wave
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_worker.builders import TASK_TYPES as WAN_TYPES
from comfy_worker.builders import build
from comfy_worker.builders.params import DEFAULTS, MEDIA
from comfy_worker.engine.workflow import model_folder
from comfy_worker.errors import ComfyWorkerError, ModelsError
from comfy_worker.logs import get_logger

if TYPE_CHECKING:
    from comfy_worker.config import Settings
    from comfy_worker.engine.client import ComfyClient
    from comfy_worker.engine.supervisor import ComfySupervisor
    from comfy_worker.store.base import TaskStore

log = get_logger(__name__)

PIECE = 64 * 1024**2  # bytes one stream reads per work item
_MEDIA = {"image": "comfy_worker_warmup.png", "last_image": "comfy_worker_warmup.png",
          "audio": "comfy_worker_warmup.wav"}  # fmt: skip
WARMUP_PREFIX = "comfy-worker-warmup"
# ComfyUI prints it (comfy/model_management.py, at import) once torch is imported and the device answered
TORCH_LINE = "Total VRAM"


# --- which files -------------------------------------------------------------------------------------------------


def graph_model_files(graph: dict[str, Any]) -> list[tuple[str, str]]:
    """(models folder, file name) for every model file ``graph`` loads, in node order, each once."""
    seen: dict[tuple[str, str], None] = {}
    for node in graph.values():
        for name, value in (node.get("inputs") or {}).items():
            folder = model_folder(str(node.get("class_type")), name)
            if folder and isinstance(value, str):
                seen.setdefault((folder, value), None)
    return list(seen)


def default_model_files(task_types: Iterable[str]) -> list[tuple[str, str]]:
    """(models folder, file name) for every model the builders' default graph of each served ``comfyui_*`` type
    loads, in task-type order, each once."""
    seen: dict[tuple[str, str], None] = {}
    for task_type in task_types:
        if task_type in WAN_TYPES:
            for found in graph_model_files(build(task_type, {}, _media(task_type))):
                seen.setdefault(found, None)
    return list(seen)


@dataclass
class Selection:
    """The files to prefetch (existing, with sizes), where the list came from, and what was named but absent."""

    source: str
    files: list[tuple[Path, int]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    present: dict[str, bool] = field(default_factory=dict)  # each name as given: whether its file exists


def select_files(settings: Settings, task_types: Iterable[str]) -> Selection:
    """WARM_MODELS, else MODELS_GROUPS of MODELS_MANIFEST, else the builders' defaults (module docstring)."""
    root = settings.models_path
    if settings.warm_models:
        source, names = "WARM_MODELS", list(settings.warm_models)
    elif settings.models_manifest and settings.models_groups:
        from comfy_worker.models_manifest import load_manifest

        try:
            entries = load_manifest(settings.models_manifest).select(settings.models_groups)
        except (ModelsError, OSError) as exc:
            log.warning("warm_prefetch_manifest_unreadable", error=str(exc))
            entries = []
        source, names = "MODELS_GROUPS", [e.relpath for e in entries]
    else:
        source, names = "builder defaults", [f"{d}/{n}" for d, n in default_model_files(task_types)]
    sel = Selection(source)
    seen: set[Path] = set()
    for name in names:
        path = Path(name).expanduser()
        if not path.is_absolute():
            if root is None:
                sel.missing.append(name)
                continue
            path = root / name
        if path in seen:
            continue
        seen.add(path)
        try:
            size = path.stat().st_size
        except OSError:
            sel.missing.append(name)
            sel.present[name] = False
            continue
        sel.files.append((path, size))
        sel.present[name] = True
    return sel


def mem_available(meminfo: str | None = None) -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes (None where the kernel does not say)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * (1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1)
    return None


def within_ram(
    files: list[tuple[Path, int]], available: int | None, fraction: float
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(taken, skipped): files in order while their total stays within ``fraction`` of ``available`` bytes (a
    file that does not fit is skipped, a later smaller one may still be taken). Unknown RAM: nothing is taken."""
    if available is None:
        return [], list(files)
    budget = int(available * fraction)
    taken, skipped, total = [], [], 0
    for path, size in files:
        if total + size <= budget:
            taken.append((path, size))
            total += size
        else:
            skipped.append((path, size))
    return taken, skipped


# --- reading -----------------------------------------------------------------------------------------------------


def read_into_cache(
    files: list[tuple[Path, int]], streams: int, stop: threading.Event | None = None, piece: int = PIECE
) -> int:
    """Read ``files`` with ``streams`` threads, ``piece`` bytes per work item (largest files' pieces first, so the
    big ones finish early); the bytes read. Stops early when ``stop`` is set."""
    stop = stop or threading.Event()
    items = [(p, off, min(piece, size - off)) for p, size in sorted(files, key=lambda f: -f[1])
             for off in range(0, size, piece)]  # fmt: skip
    lock = threading.Lock()
    done = [0]

    def read(item: tuple[Path, int, int]) -> None:
        path, offset, length = item
        if stop.is_set():
            return
        got = 0
        try:
            with path.open("rb", buffering=0) as fh:
                fh.seek(offset)
                buf = bytearray(min(length, 8 * 1024**2))
                view = memoryview(buf)
                while got < length and not stop.is_set():
                    n = fh.readinto(view[: min(len(buf), length - got)])
                    if not n:
                        break
                    got += n
        except OSError as exc:
            log.warning("warm_prefetch_read_failed", file=str(path), error=str(exc))
        with lock:
            done[0] += got

    with ThreadPoolExecutor(max_workers=max(1, streams), thread_name_prefix="warm-prefetch") as pool:
        list(pool.map(read, items))
    return done[0]


# --- the tiny prompt --------------------------------------------------------------------------------------------


def warmup_graph(task_type: str) -> dict[str, Any]:
    """The builders' default graph of ``task_type`` at 64x64, one frame, the fewest steps (HIGH and LOW both
    run: 2 steps split 1/1), saved under ``comfy-worker-warmup/``: it loads every default model."""
    params: dict[str, Any] = {"width": 64, "height": 64, "num_frames": 1, "steps": 1, "seed": 0,
                              "filename_prefix": f"{WARMUP_PREFIX}/{task_type}"}  # fmt: skip
    if "boundary_step" in DEFAULTS[task_type]:  # the HIGH/LOW pair: boundary_step < steps
        params.update(steps=2, boundary_step=1)
    return build(task_type, params, _media(task_type))


def _media(task_type: str) -> dict[str, str]:
    """The warm-up's uploaded input names for the media keys ``task_type`` takes."""
    return {key: _MEDIA[key] for key in MEDIA.get(task_type, {})}


def tiny_png() -> bytes:
    """A 64x64 grey PNG (the warm-up's input image), written with zlib alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * (64 * 3) for _ in range(64))
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tiny_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """Silence as a mono 16-bit WAV (the warm-up's audio for s2v)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


# --- the daemon's part -------------------------------------------------------------------------------------------


class WarmStart:
    """Prefetch and warm-up for one daemon (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        task_types: Iterable[str],
        *,
        meminfo: Callable[[], int | None] = mem_available,
    ) -> None:
        self.settings = settings
        self.task_types = list(task_types)
        self._meminfo = meminfo
        self._stop = threading.Event()
        self._booted = threading.Event()  # the launched ComfyUI has imported torch, or stop() (WARM_PREFETCH_START)
        self._claimed = asyncio.Event()
        self._shutting = asyncio.Event()
        self._give_way = asyncio.Event()  # claimed or shutting: a running warm-up prompt is interrupted
        self._prefetch: threading.Thread | None = None
        # "folder/name" under MODELS_DIR -> whether the file exists: each model file is looked at once (the
        # prefetch's selection of the builders' defaults fills it; the warm-up adds what it still needs)
        self._present: dict[str, bool] = {}
        self.prefetched_bytes = 0
        self.running = asyncio.Event()  # a warm-up prompt is in ComfyUI
        self.finished = asyncio.Event()  # the warm-up has ended (any outcome)
        self.outcome = "off"  # the warm-up's: off | skipped_task_waiting | done | aborted_claim | failed | ...

    # prefetch

    def watch(self, supervisor: ComfySupervisor | None) -> None:
        """Follow the boot of the ComfyUI ``supervisor`` launches (None, or attached: nothing to wait for)."""
        if supervisor is None or supervisor.attached:
            self._booted.set()
        else:
            supervisor.line_watchers.append(self.engine_output)

    def engine_output(self, line: str) -> None:
        """A line ComfyUI printed: its ``Total VRAM`` line means torch is imported."""
        if line.startswith(TORCH_LINE):
            self._booted.set()

    def engine_ready(self) -> None:
        """ComfyUI answers (or none is launched): the readers wait no longer."""
        self._booted.set()

    async def start_prefetch(self) -> threading.Thread | None:
        """Choose the files (in a thread: it looks at each of them) and start reading them in another; returns
        once reading has started. None when WARM_PREFETCH is off or nothing is to be read."""
        if not self.settings.warm_prefetch:
            return None
        sel, available = await asyncio.to_thread(self._select)
        taken, skipped = within_ram(sel.files, available, self.settings.warm_prefetch_ram_fraction)
        log.info(
            "warm_prefetch_planned",
            source=sel.source,
            files=[str(p) for p, _ in taken],
            gb=round(sum(s for _, s in taken) / 1e9, 2),
            skipped_for_ram=[str(p) for p, _ in skipped],
            missing=sel.missing,
            streams=self.settings.warm_prefetch_streams,
        )
        if not taken:
            return None

        def run() -> None:
            t_wait = time.monotonic()
            if self.settings.warm_prefetch_start == "torch":
                self._booted.wait()  # stop() sets it too
                if self._stop.is_set():
                    return
            t0 = time.monotonic()
            self.prefetched_bytes = read_into_cache(taken, self.settings.warm_prefetch_streams, self._stop)
            secs = time.monotonic() - t0
            log.info(
                "warm_prefetch_done",
                gb=round(self.prefetched_bytes / 1e9, 2),
                seconds=round(secs, 2),
                gb_per_s=round(self.prefetched_bytes / 1e9 / max(secs, 1e-6), 2),
                waited_s=round(t0 - t_wait, 2),
                stopped=self._stop.is_set(),
            )

        self._prefetch = threading.Thread(target=run, name="warm-prefetch", daemon=True)
        self._prefetch.start()
        return self._prefetch

    def _select(self) -> tuple[Selection, int | None]:
        sel = select_files(self.settings, self.task_types)
        if sel.source == "builder defaults":  # the models the warm-up loads: known now, not looked at again
            self._present.update(sel.present)
        return sel, self._meminfo()

    # warm-up

    def claimed(self) -> None:
        """The claim loop took a task: a warm-up still running gives way."""
        self._claimed.set()
        self._give_way.set()

    def shutdown(self) -> None:
        """The worker is stopping: a warm-up prompt in ComfyUI is interrupted and no other is queued."""
        self._shutting.set()
        self._give_way.set()

    def _why_stopped(self) -> str | None:
        if self._shutting.is_set():
            return "shutdown"
        if self._claimed.is_set():
            return "claim"
        return None

    async def warm_up(self, engine: Any, store: TaskStore) -> str:
        """Run the tiny prompts (WARM_UP) on ``engine`` (the ComfyUI engine, None without one), unless a task
        waits; returns the outcome (also logged)."""
        if not self.settings.warm_up:
            self.finished.set()
            return self.outcome
        client: ComfyClient | None = getattr(engine, "client", None) if getattr(engine, "started", False) else None
        if client is None:
            return self._end("skipped_no_comfyui")
        if not getattr(engine, "healthy", True):  # attached, and not answering (yet)
            return self._end("skipped_comfyui_unreachable")
        types = [t for t in self.task_types if t in WAN_TYPES]
        if not types:
            return self._end("skipped_no_comfyui_types")
        t0 = time.monotonic()
        done: list[str] = []
        try:
            for task_type in types:
                if self._shutting.is_set():
                    return self._end("skipped_shutdown" if not done else "stopped_shutdown", done=done)
                if self._claimed.is_set() or await self._task_waiting(store):
                    return self._end("skipped_task_waiting" if not done else "stopped_task_waiting", done=done)
                graph = warmup_graph(task_type)
                absent = await asyncio.to_thread(self.absent_models, graph)
                if absent:
                    log.info("warm_up_type_skipped", task_type=task_type, models_missing=absent)
                    continue
                pid = None
                try:
                    await self._upload_media(client, graph)
                    pid = await client.queue_prompt(graph)
                    log.info("warm_up_started", task_type=task_type, prompt_id=pid)
                    self.running.set()
                    hist = await client.wait(pid, cancel=self._give_way, deadline_s=self.settings.task_timeout_s,
                                             stall_s=self.settings.stall_timeout_s)  # fmt: skip
                except ComfyWorkerError as exc:
                    why = self._why_stopped()
                    if why is not None:  # client.wait has interrupted the prompt
                        return self._end(f"aborted_{why}", done=done, task_type=task_type, prompt_id=pid)
                    log.warning("warm_up_prompt_failed", task_type=task_type, error=str(exc)[:500])
                    continue
                except asyncio.CancelledError:  # the daemon's close: the prompt must not go on in ComfyUI
                    if pid is not None:
                        await _interrupt(client, pid)
                    # a shutdown may cancel the warm-up before client.wait has seen _give_way: still a shutdown
                    outcome = "aborted_shutdown" if self._shutting.is_set() else "aborted_cancelled"
                    self._end(outcome, done=done, task_type=task_type, prompt_id=pid)
                    raise
                finally:
                    if pid is not None:
                        with contextlib.suppress(ComfyWorkerError, OSError):
                            await client.delete_history([pid])
                self._remove_outputs(hist.outputs)
                done.append(task_type)
        except (ComfyWorkerError, OSError) as exc:
            return self._end("failed", error=str(exc)[:500], done=done)
        outcome = "done" if done else "nothing_loaded"
        return self._end(outcome, done=done, seconds=round(time.monotonic() - t0, 2))

    def absent_models(self, graph: dict[str, Any]) -> list[str]:
        """The graph's model files not under MODELS_DIR (none known absent when it is unset: ComfyUI may have
        more model folders than we know of). A file the prefetch's selection already looked at is not again."""
        root = self.settings.models_path
        if root is None:
            return []
        absent = []
        for folder, value in graph_model_files(graph):
            name = f"{folder}/{value}"
            if name not in self._present:
                self._present[name] = (root / folder / value).exists()
            if not self._present[name]:
                absent.append(name)
        return absent

    async def _task_waiting(self, store: TaskStore) -> bool:
        """A task of this worker's types is queued and due (the claim's own lookup, ``TaskStore.work_ready``)."""
        try:
            return await store.work_ready(self.task_types)
        except ComfyWorkerError:
            return True  # cannot tell: do not risk delaying one

    async def _upload_media(self, client: ComfyClient, graph: dict[str, Any]) -> None:
        names = {str(v) for node in graph.values() for v in (node.get("inputs") or {}).values()}
        with tempfile.TemporaryDirectory(prefix="comfy-worker-warmup-") as tmp:
            for name, data in ((_MEDIA["image"], tiny_png), (_MEDIA["audio"], tiny_wav)):
                if name in names:
                    path = Path(tmp) / name
                    path.write_bytes(data())
                    await client.upload_file(path)

    def _remove_outputs(self, outputs: dict[str, Any]) -> None:
        out_dir = self.settings.comfy_output_path
        if out_dir is None or self.settings.keep_comfy_files:
            return
        for node_out in outputs.values():
            for items in node_out.values() if isinstance(node_out, dict) else ():
                for item in items if isinstance(items, list) else ():
                    if isinstance(item, dict) and item.get("filename") and item.get("type", "output") == "output":
                        path = (out_dir / str(item.get("subfolder") or "") / str(item["filename"])).resolve()
                        if path.is_relative_to(out_dir / WARMUP_PREFIX):
                            with contextlib.suppress(OSError):
                                path.unlink()

    def _end(self, outcome: str, **data: Any) -> str:
        self.outcome = outcome
        self.running.clear()
        self.finished.set()
        log.info("warm_up_finished", outcome=outcome, **data)
        return outcome

    def stop(self) -> None:
        """Stop reading (at close); readers still waiting for ComfyUI's boot end without reading."""
        self._stop.set()
        self._booted.set()


async def _interrupt(client: ComfyClient, prompt_id: str, timeout_s: float = 5.0) -> None:
    """Interrupt (or dequeue) a warm-up prompt from a task being cancelled, within ``timeout_s``."""
    try:
        await asyncio.wait_for(client.interrupt(prompt_id), timeout_s)
    except (ComfyWorkerError, OSError, TimeoutError) as exc:
        log.warning("warm_up_interrupt_failed", prompt_id=prompt_id, error=str(exc)[:300])


def wait_prefetch(thread: threading.Thread | None, timeout: float) -> bool:
    """Join a prefetch thread (tests, benchmarks); True when it finished."""
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()


__all__ = [
    "Selection",
    "WarmStart",
    "default_model_files",
    "graph_model_files",
    "mem_available",
    "read_into_cache",
    "select_files",
    "wait_prefetch",
    "warmup_graph",
    "within_ram",
]
