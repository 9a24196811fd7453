"""The Wan2GP child: a program run by Wan2GP's own Python that imports Wan2GP in-process, keeps the current
model loaded between generations and speaks :mod:`worker_wgp.protocol` on stdin/stdout.

    WAN2GP_PATH=/opt/Wan2GP /opt/Wan2GP/venv/bin/python /path/to/worker_wgp/child.py \\
        --output-dir /tmp/wan2gp-out [--wan2gp-args "--attention sdpa --profile 4"]

Layout: :class:`ChildServer` (message handling, one generation at a time in a worker thread, cancel / free /
shutdown answered while it runs) drives a :class:`~worker_wgp.backend.Backend`.
:class:`~worker_wgp.backend.WanApiBackend` is the only code that touches Wan2GP: it uses Wan2GP's documented
Python API (``shared/api.py``: ``init`` → session, ``submit_task`` → job with progress events and
``result()``, ``close()`` → ``wgp.release_model()``), which keeps the last loaded model alive across tasks. A
checkout without ``shared/api.py`` (before March 2026) is refused at start; the engine says so before launching.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

if not __package__:  # run by path (python …/worker_wgp/child.py): import worker_wgp without exposing siblings
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path.pop(0)
    sys.path.append(str(_here.parent))  # last, so Wan2GP's own top-level modules always win

from worker_wgp import protocol as p
from worker_wgp.backend import Backend, GenerationFailure, WanApiBackend, classify

EXIT_STARTUP_FAILED = 3
SHUTDOWN_WAIT_S = 10.0


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
