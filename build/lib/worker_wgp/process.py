"""One run of the Wan2GP child process: launch it, write requests, read its events and its stderr, end it.

:class:`ChildProcess` knows nothing of restarts or pending requests (that is :mod:`worker_wgp.supervision`
and :mod:`worker_wgp.rpc`): it parses every stdout line as a protocol event and hands it to ``on_event``; a
line that does not parse means the channel cannot be trusted any more, so the child is terminated. Every stderr
line goes to the worker's log as ``wan2gp_output`` and into ``tail`` (kept for error details). The child runs
in its own session, so ending it ends whatever it spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from comfy_worker.errors import EngineUnavailable
from comfy_worker.logs import background_context, get_logger
from worker_wgp import protocol as p

log = get_logger(__name__)
EventHandler = Callable[[p.Event], Awaitable[None]]


class ChildProcess:
    def __init__(self, proc: asyncio.subprocess.Process, tail: deque[str], on_event: EventHandler) -> None:
        self._proc = proc
        self._tail = tail
        self._on_event = on_event
        self._write_lock = asyncio.Lock()
        self._readers = [
            asyncio.create_task(self._read_events(), name="wan2gp-events", context=background_context()),
            asyncio.create_task(self._read_stderr(), name="wan2gp-stderr", context=background_context()),
        ]

    @classmethod
    async def launch(
        cls, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], tail: deque[str], on_event: EventHandler
    ) -> ChildProcess:
        """Start the child (OSError when it cannot be started)."""
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=p.MAX_LINE_BYTES,
        )
        return cls(proc, tail, on_event)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    async def write(self, request: p.Request) -> None:
        stdin = self._proc.stdin
        if not self.alive or stdin is None:
            raise EngineUnavailable("the Wan2GP child is not running")
        async with self._write_lock:
            try:
                stdin.write(p.encode(request).encode())
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise EngineUnavailable(f"the Wan2GP child closed its input: {exc}") from exc

    async def exited(self) -> int:
        """Wait for the child to exit and for what it wrote before to be read; its exit code."""
        code = await self._proc.wait()
        for task in self._readers:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
        if self._proc.stdin is not None:  # release our end of its input pipe with the process
            self._proc.stdin.close()
        return code

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns once it is gone."""
        if not self.alive:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), grace_s)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await self._proc.wait()
            log.warning("wan2gp_killed", pid=self.pid, grace_s=grace_s)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)  # start_new_session=True: the group is the child and what it spawned
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)

    async def _read_events(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:
                log.error("wan2gp_protocol_error", error=f"a line over {p.MAX_LINE_BYTES} bytes")
                await self.terminate(5.0)
                return
            if not raw:
                return
            try:
                event = p.parse_event(raw)
            except p.ProtocolError as exc:
                log.error("wan2gp_protocol_error", error=str(exc), line=raw[:300].decode(errors="replace"))
                await self.terminate(5.0)  # a desynchronised channel cannot be trusted: the engine restarts it
                return
            await self._on_event(event)

    async def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        while True:
            try:
                raw = await stderr.readline()
            except ValueError:  # a line longer than the stream limit: take what is there
                raw = await stderr.read(65536)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            log.info("wan2gp_output", line=line)
