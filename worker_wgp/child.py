"""The Wan2GP child: a program run by Wan2GP's own Python that imports Wan2GP in-process, keeps the current
model loaded between generations and speaks :mod:`worker_wgp.protocol` on stdin/stdout.

    WAN2GP_PATH=/opt/Wan2GP /opt/Wan2GP/venv/bin/python /path/to/worker_wgp/child.py \\
        --output-dir /tmp/wan2gp-out [--wan2gp-args "--attention sdpa --profile 4"]

Layout: :class:`ChildServer` (message handling, one generation at a time in a worker thread, cancel / free /
shutdown answered while it runs) drives a :class:`Backend`. :class:`WanApiBackend` is the only code that
touches Wan2GP: it uses Wan2GP's documented Python API (``shared/api.py``: ``init`` → session,
``submit_task`` → job with progress events and ``result()``, ``close()`` → ``wgp.release_model()``), which
keeps the last loaded model alive across tasks. A checkout without ``shared/api.py`` (before March 2026) is
refused at start; the engine says so before launching.

Error kinds: Wan2GP's validation stage → ``invalid``; an out-of-memory (an exception named
``OutOfMemoryError`` or a ``MemoryError``, or Wan2GP's own "unsufficient VRAM/RAM" message, which is how its
``generate_media`` reports a CUDA OOM it caught) → ``oom``; ``OSError`` family (network, weights download,
disk) → ``unavailable``; anything else → ``failed``. After an ``oom`` the child releases the model and empties
the caches, so a retry starts from clean memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

if not __package__:  # run by path (python …/worker_wgp/child.py): import worker_wgp without exposing siblings
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path.pop(0)
    sys.path.append(str(_here.parent))  # last, so Wan2GP's own top-level modules always win

from worker_wgp import protocol as p

EXIT_STARTUP_FAILED = 3
SHUTDOWN_WAIT_S = 10.0


class GenerationFailure(Exception):
    """A generation that did not produce files, with its protocol error kind."""

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}


@dataclass
class Outcome:
    files: list[str]
    switched: bool
    load_s: float


ProgressFn = Callable[[p.Progress], None]


class Backend(Protocol):
    version: str | None

    def loaded_model(self) -> str | None: ...

    def generate(
        self, request_id: str, model: str, settings: dict[str, Any], on_progress: ProgressFn,
        cancel: threading.Event,
    ) -> Outcome: ...

    def free(self) -> str | None: ...

    def lora_dir(self, model: str) -> str: ...

    def memory(self) -> p.Memory: ...


# --- measuring ---------------------------------------------------------------------------------------------


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def gpu_memory() -> dict[str, int | None]:
    """torch's view of GPU 0 when torch is already imported (by Wan2GP) and sees a GPU; empty otherwise."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_available():
            return {}
        free, total = torch.cuda.mem_get_info()
        return {
            "gpu_allocated_bytes": int(torch.cuda.memory_allocated()),
            "gpu_reserved_bytes": int(torch.cuda.memory_reserved()),
            "gpu_peak_bytes": int(torch.cuda.max_memory_allocated()),
            "gpu_free_bytes": int(free),
            "gpu_total_bytes": int(total),
        }
    except Exception:  # a broken driver must not break a status report
        return {}


def measure() -> p.Memory:
    return p.Memory(rss_bytes=rss_bytes(), **gpu_memory())


def reset_peak() -> None:
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def api_phase(phase: str) -> str:
    """Wan2GP API phase (loading_model, inference_stage_2, downloading_output, …) → protocol phase."""
    if phase.startswith("inference"):
        return "inference"
    if phase == "downloading_output":
        return "saving"
    return phase if phase in p.PHASES else "other"


def classify(exc: BaseException) -> str:
    """Protocol error kind for an exception raised by Wan2GP (by type, never by message)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "OutOfMemoryError" in names or isinstance(exc, MemoryError):
        return "oom"
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, requests/huggingface_hub errors, disk full
        return "unavailable"
    return "failed"


# Wan2GP's generate_media catches a CUDA OOM itself and reports only a message; these are its words
# (wgp.py: "it is likely that you have unsufficient VRAM" / "... unsufficient RAM"), plus torch's own.
_OOM_WORDS = ("unsufficient vram", "unsufficient ram", "insufficient vram", "cuda out of memory", "out of memory")


# --- the Wan2GP adapter (the only code that touches Wan2GP) ---------------------------------------------------


class WanApiBackend:
    """Wan2GP through its documented Python API (``shared/api.py``; docs/API.md in the Wan2GP repository)."""

    def __init__(self, root: Path, output_dir: Path, cli_args: list[str]) -> None:
        root = root.resolve()
        if not (root / "wgp.py").is_file() or not (root / "shared" / "api.py").is_file():
            raise RuntimeError(f"{root} holds no Wan2GP with shared/api.py")
        os.chdir(root)  # Wan2GP resolves defaults/, finetunes/, loras/ … against the working directory
        sys.path.insert(0, str(root))
        from shared import api  # type: ignore[import-not-found]

        output_dir.mkdir(parents=True, exist_ok=True)
        self._api = api
        self.session = api.init(
            root=root, output_dir=output_dir, cli_args=cli_args, console_output=True, console_isatty=False
        )
        import wgp  # type: ignore[import-not-found]  # the module init() imported

        self.wgp = wgp
        self.version = str(getattr(wgp, "WanGP_version", "") or "") or None
        self._last_exc: BaseException | None = None
        self._wrap_generate_media()

    def _wrap_generate_media(self) -> None:
        """Keep the exception object an uncaught failure carried (the API keeps only its text), so it can be
        classified by type. functools.wraps keeps the signature the API reads with inspect.signature."""
        import functools

        original = self.wgp.generate_media

        @functools.wraps(original)
        def generate_media(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                self._last_exc = exc
                raise

        self.wgp.generate_media = generate_media

    def loaded_model(self) -> str | None:
        if getattr(self.wgp, "wan_model", None) is None:
            return None
        return getattr(self.wgp, "transformer_type", None)

    def generate(
        self, request_id: str, model: str, settings: dict[str, Any], on_progress: ProgressFn,
        cancel: threading.Event,
    ) -> Outcome:
        switched = self.loaded_model() != model
        self._last_exc = None
        reset_peak()
        t0 = time.monotonic()
        load_s = 0.0
        job = self.session.submit_task({**settings, "model_type": model})
        cancel_sent = False
        for event in job.events.iter(timeout=0.2):
            if cancel.is_set() and not cancel_sent:
                job.cancel()
                cancel_sent = True
            if event is None:
                continue
            if event.kind == "status" and "model loaded" in str(event.data).lower():
                load_s = time.monotonic() - t0
            elif event.kind == "progress":
                u = event.data
                phase = api_phase(str(u.phase))
                if phase != "loading_model" and switched and not load_s:
                    load_s = time.monotonic() - t0
                on_progress(p.Progress(request_id, phase, u.current_step, u.total_steps, float(u.progress), u.status))
        if cancel.is_set() and not cancel_sent:
            job.cancel()
        result = job.result()
        if result.success and result.generated_files:
            return Outcome([str(Path(f).resolve()) for f in result.generated_files], switched, load_s)
        raise self._failure(result, cancel.is_set())

    def _failure(self, result: Any, cancelled: bool) -> GenerationFailure:
        errors = list(result.errors)
        messages = "; ".join(str(e.message) for e in errors) or "Wan2GP produced no file"
        stages = {str(getattr(e, "stage", "") or "") for e in errors}
        details = {"errors": [{"message": str(e.message), "stage": getattr(e, "stage", None)} for e in errors]}
        if cancelled or "cancelled" in stages:
            return GenerationFailure("cancelled", "generation cancelled", details)
        if "validation" in stages:
            return GenerationFailure("invalid", f"Wan2GP refused the settings: {messages}", details)
        if self._last_exc is not None:
            kind = classify(self._last_exc)
            details["exception"] = type(self._last_exc).__name__
        elif any(word in messages.lower() for word in _OOM_WORDS):
            kind = "oom"
        else:
            kind = "failed"
        if kind == "oom":
            self.free()  # the retry (here or on another worker) starts from clean memory
        return GenerationFailure(kind, messages, details)

    def free(self) -> str | None:
        model = self.loaded_model()
        self.session.close()  # wgp.release_model(): drop the model, offload hooks, caches; empty the CUDA cache
        return model

    def lora_dir(self, model: str) -> str:
        return os.path.abspath(self.wgp.get_lora_dir(model))

    def memory(self) -> p.Memory:
        return measure()


# --- message handling ---------------------------------------------------------------------------------------


@dataclass
class _Running:
    request_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class ChildServer:
    """Reads requests, runs one generation at a time in a worker thread, writes events (thread-safe)."""

    def __init__(self, backend: Backend, out: IO[str]) -> None:
        self.backend = backend
        self._out = out
        self._write_lock = threading.Lock()
        self._running: _Running | None = None
        self._state_lock = threading.Lock()
        self.stopping = False

    def send(self, event: p.Event) -> None:
        line = p.encode(event)
        with self._write_lock:
            self._out.write(line)
            self._out.flush()

    def ready(self) -> None:
        self.send(p.Ready(os.getpid(), p.PROTOCOL_VERSION, self.backend.version, self.backend.loaded_model(),
                          self.backend.memory()))

    def serve(self, lines: Iterable[str]) -> None:
        """Handle lines until shutdown or end of input (the parent went away: release and return)."""
        for line in lines:
            if line.strip():
                self.handle_line(line)
            if self.stopping:
                return
        self._shutdown(None)

    def handle_line(self, line: str) -> None:
        try:
            request = p.parse_request(line)
        except p.ProtocolError as exc:
            self.send(p.Error(p.request_id_of(line), "bad_request", str(exc), {"key": exc.key}))
            return
        try:
            self._dispatch(request)
        except Exception as exc:  # a bug here must answer the request, not kill the child
            self.send(p.Error(request.id, "internal", f"{type(exc).__name__}: {exc}",
                              {"traceback": traceback.format_exc(limit=8)}))

    def _dispatch(self, request: p.Request) -> None:
        if isinstance(request, p.Generate):
            self._start_generate(request)
        elif isinstance(request, p.Cancel):
            running = self._running
            if running is not None and running.request_id == request.target:
                running.cancel.set()
        elif isinstance(request, p.Free):
            if self._busy():
                self.send(p.Error(request.id, "busy", "cannot free memory while a generation runs; cancel it first"))
                return
            model = self.backend.free()
            self.send(p.Freed(request.id, model, self.backend.memory()))
        elif isinstance(request, p.Status):
            self.send(p.StatusReply(request.id, self.backend.loaded_model(), self._busy(), self.backend.memory()))
        elif isinstance(request, p.LoraDir):
            self.send(p.LoraDirReply(request.id, request.model, self.backend.lora_dir(request.model)))
        elif isinstance(request, p.Shutdown):
            self._shutdown(request.id)

    def _busy(self) -> bool:
        return self._running is not None

    def _start_generate(self, request: p.Generate) -> None:
        with self._state_lock:
            if self._busy():
                assert self._running is not None
                self.send(p.Error(request.id, "busy",
                                  f"generation {self._running.request_id} is still running; one at a time"))
                return
            running = _Running(request.id)
            running.thread = threading.Thread(target=self._generate, args=(request, running),
                                              name=f"generate-{request.id}", daemon=True)
            self._running = running
            running.thread.start()

    def _generate(self, request: p.Generate, running: _Running) -> None:
        t0 = time.monotonic()
        final: p.Event
        try:
            outcome = self.backend.generate(request.id, request.model, request.settings, self.send, running.cancel)
        except GenerationFailure as exc:
            final = p.Error(request.id, exc.kind, exc.message, exc.details)
        except Exception as exc:
            final = p.Error(request.id, classify(exc), f"{type(exc).__name__}: {exc}",
                            {"exception": type(exc).__name__, "traceback": traceback.format_exc(limit=8)})
        else:
            final = p.Result(request.id, request.model, outcome.files, outcome.switched, round(outcome.load_s, 3),
                             round(time.monotonic() - t0, 3), self.backend.memory())
        with self._state_lock:  # not busy any more before the parent hears the end: it may send the next one
            if self._running is running:
                self._running = None
        self.send(final)

    def _shutdown(self, request_id: str | None) -> None:
        self.stopping = True
        running = self._running
        if running is not None and running.thread is not None:
            running.cancel.set()
            running.thread.join(SHUTDOWN_WAIT_S)
        if not self._busy():
            with contextlib.suppress(Exception):
                self.backend.free()
        if request_id is not None:
            self.send(p.Bye(request_id))


# --- program ------------------------------------------------------------------------------------------------


def protocol_stream() -> IO[str]:
    """Our stdout becomes the protocol channel; fd 1 is pointed at stderr, so anything Wan2GP (or a C library)
    prints lands in stderr, which the parent logs."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return proto


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Wan2GP child of comfy-worker (speaks worker_wgp.protocol)")
    parser.add_argument("--output-dir", required=True, help="where Wan2GP writes generated files")
    parser.add_argument("--wan2gp-args", default="", help="Wan2GP command-line flags, shell-quoted")
    args = parser.parse_args(argv)
    out = protocol_stream()
    root = os.environ.get("WAN2GP_PATH", "")
    try:
        if not root:
            raise RuntimeError("WAN2GP_PATH is not set")
        backend = WanApiBackend(Path(root), Path(args.output_dir).resolve(), shlex.split(args.wan2gp_args))
    except BaseException as exc:
        traceback.print_exc()
        out.write(p.encode(p.Error(None, classify(exc) if isinstance(exc, Exception) else "internal",
                                   f"Wan2GP could not start: {type(exc).__name__}: {exc}")))
        out.flush()
        return EXIT_STARTUP_FAILED
    server = ChildServer(backend, out)
    server.ready()
    server.serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
