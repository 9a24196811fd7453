"""Run ComfyUI as a child process (or attach to one at COMFY_URL), watch it, restart it with backoff.

The child's stdout/stderr are read continuously line by line into the worker's log (event
``comfyui_output``) and the last lines are kept for error details; the pipe is never left unread.

An attached ComfyUI is not ours to restart, and its death has no exit code to see. What we see is its websocket
dropping: :meth:`ComfySupervisor.connection_lost` (the client calls it) then asks ``/system_stats``. A refused
(or impossible) connection, or an HTTP error, means it **went away**: ``comfy_unreachable`` is logged, the
supervisor turns unhealthy (the worker claims nothing for it), ``on_exit(None)`` is called as for a dead child (the
daemon fails the task that was running in it, retryable), and ``/system_stats`` is probed with backoff until it
answers again (``comfy_reachable``). A server that accepts the connection but answers slowly is alive (busy or
stalled): that is left to the task's stall and deadline timers, never reported as gone. A websocket that drops
while the server answers (a network blip) is reconnected by the client and costs nothing.

An attached server that does not answer within COMFY_STARTUP_TIMEOUT when the worker starts does not stop it:
``start`` returns with the supervisor unreachable (``comfy_unreachable_at_start``) and the same backoff probe finds
it once it answers (``on_reachable`` then lets the engine open its websocket). So, after ``start``, an attached
supervisor is always either healthy or unreachable with the probe running (until ``stop``): nothing leaves it
unhealthy with nobody looking (a failed probe in :meth:`ensure_running` counts as going away).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from comfy_worker.engine.frames import nodes_paths_yaml
from comfy_worker.errors import EngineGone, EngineStartupError, EngineUnavailable
from comfy_worker.logs import background_context, get_logger

log = get_logger(__name__)
TAIL_LINES = 200
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PROBE_TIMEOUT_S = 2.0
REACH_BASE_S = 0.5  # an attached ComfyUI that went away is probed after 0.5 s, then 1, 2, 4, … up to REACH_MAX_S
REACH_MAX_S = 5.0  # as the websocket's own reconnect backoff: a server back is found within 5 s


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, SIGTERM the child when the worker dies, so a worker killed with
    ``kill -9`` does not leave its ComfyUI holding the GPU memory and the port (its log pipe gone)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ComfySupervisor:
    """Owns the ComfyUI process. ``died`` is set whenever a running ComfyUI exits unexpectedly (cleared on a
    successful restart); ``on_exit(returncode)`` is called too when given."""

    def __init__(
        self,
        settings: Any,
        *,
        on_exit: Callable[[int | None], None] | None = None,
        auto_restart: bool = True,
        min_uptime_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.on_exit = on_exit
        self.auto_restart = auto_restart
        self.min_uptime_s = min_uptime_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.died = asyncio.Event()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._healthy = False
        self._failures_in_row = 0
        self._ready_at = 0.0
        self.attached = bool(settings.comfy_url)
        # attached: why the server was last found gone ({"url", "reason", "at"}; kept after it answers again, for
        # the failure of the task it took down), the background check after a websocket drop, the reach loop
        self.lost: dict[str, Any] | None = None
        self.unreachable = False
        self._reachable = asyncio.Event()
        self._check_task: asyncio.Task[None] | None = None
        self._reach_task: asyncio.Task[None] | None = None
        self._answered = False  # attached: the server has answered at least once
        self.on_reachable: Callable[[], None] | None = None  # attached: called when it answers again
        self.line_watchers: list[Callable[[str], None]] = []  # launched: called with each line ComfyUI prints

    # --- properties -------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.attached:
            return str(self.settings.comfy_url).rstrip("/")
        host = self.settings.comfy_listen
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"http://{host}:{self.settings.comfy_port}"

    @property
    def healthy(self) -> bool:
        if self.attached:
            return self._healthy
        return self._healthy and self._proc is not None and self._proc.returncode is None

    @property
    def answered(self) -> bool:
        """Attached: the server has answered since the worker started (False: it has not come up yet)."""
        return self._answered

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(list(self.tail)[-lines:])

    # --- start ------------------------------------------------------------------------------------------

    def command(self) -> tuple[list[str], Path]:
        """(argv, cwd) to launch ComfyUI; EngineStartupError with one clear line when it cannot be."""
        s = self.settings
        if not s.comfy_path:
            raise EngineStartupError("COMFY_PATH is not set: point it at the ComfyUI directory (with main.py)")
        path = Path(s.comfy_path).expanduser()
        if not path.is_dir():
            raise EngineStartupError(f"COMFY_PATH={path} does not exist: point it at the ComfyUI directory")
        if not (path / "main.py").is_file():
            raise EngineStartupError(f"COMFY_PATH={path} has no main.py: point it at the ComfyUI directory")
        # absolute: the child starts in COMFY_PATH, where a relative COMFY_PYTHON would mean something else
        python = os.path.abspath(os.path.expanduser(s.comfy_python)) if s.comfy_python else sys.executable
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise EngineStartupError(f"COMFY_PYTHON={python} is not an executable file: set it to ComfyUI's python")
        argv = [
            python,
            "main.py",
            "--listen",
            s.comfy_listen,
            "--port",
            str(s.comfy_port),
            "--disable-auto-launch",
        ]
        if s.video_encode == "worker" or s.comfy_gc_freeze:  # our node package (engine/frames.py)
            argv += ["--extra-model-paths-config", str(nodes_paths_yaml())]  # COMFY_ARGS may add its own
        argv += shlex.split(s.comfy_args or "")
        return argv, path

    def child_env(self) -> dict[str, str] | None:
        """ComfyUI's environment: the worker's, plus COMFY_WORKER_GC_FREEZE=1 with COMFY_GC_FREEZE (read by our node
        package in ComfyUI, comfy_nodes/comfy_worker_nodes/gc_freeze.py); None: inherited as it is."""
        if not self.settings.comfy_gc_freeze:
            return None
        return {**os.environ, "COMFY_WORKER_GC_FREEZE": "1"}

    async def start(self) -> None:
        """Launch and wait until /system_stats answers (EngineStartupError otherwise). Attached: wait as long for
        it, then, if it still does not answer, return with the supervisor unreachable (module docstring)."""
        self._stopping = False
        if self.attached:
            await self._attach()
            return
        async with self._lock:
            await self._launch()

    async def _attach(self) -> None:
        deadline = time.monotonic() + self.settings.comfy_startup_timeout
        while True:
            state, why = await self._reach()
            if state == "up":
                self._answering()
                log.info("comfyui_attached", url=self.base_url)
                return
            if time.monotonic() >= deadline or self._stopping:
                break
            await asyncio.sleep(0.5)
        self._mark_unreachable(why)
        log.warning(
            "comfy_unreachable_at_start",
            url=self.base_url,
            reason=why,
            waited_s=self.settings.comfy_startup_timeout,
            hint="the worker starts anyway and claims nothing for ComfyUI until it answers at COMFY_URL "
            "(probed with backoff)",
        )

    async def _probe(self) -> bool:
        return (await self._reach())[0] == "up"

    async def _reach(self) -> tuple[str, str]:
        """Ask ``/system_stats``: ("up", ""), ("gone", why) when nothing answers there (connection refused, no
        route, connect timeout) or it answers with an HTTP error, ("busy", why) when it accepts the connection
        but does not answer in time (alive: stalled or busy)."""
        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as http:
                resp = await http.get(f"{self.base_url}/system_stats")
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return "gone", _connect_failure(exc)
        except httpx.HTTPError as exc:
            return "busy", f"{type(exc).__name__}: {exc}".rstrip(": ")
        if resp.status_code != 200:
            return "gone", f"HTTP {resp.status_code} from /system_stats"
        return "up", ""

    # --- attached: gone and back ------------------------------------------------------------------------

    def connection_lost(self) -> None:
        """The websocket to an attached ComfyUI dropped (or could not be reopened): find out in the background
        whether the server went away. No-op for a child (its exit is seen directly), while a check runs, while
        it is already known gone, and while stopping."""
        if not self.attached or self._stopping or self.unreachable or not self._healthy:
            return
        if self._check_task is not None and not self._check_task.done():
            return
        self._check_task = asyncio.create_task(
            self._check_attached(), name="comfyui-check", context=background_context()
        )

    async def _check_attached(self) -> None:
        while not self._stopping and not self.unreachable:
            state, why = await self._reach()
            if state == "up":
                return  # a network blip: the client reopens its websocket by itself
            if state == "gone":
                self._went_away(why)
                return
            await asyncio.sleep(REACH_BASE_S)  # alive but slow to answer: not gone; look again

    def _went_away(self, reason: str) -> None:
        self._mark_unreachable(reason)
        log.error("comfy_unreachable", url=self.base_url, reason=reason)
        self.died.set()
        if self.on_exit is not None:
            self.on_exit(None)

    def _mark_unreachable(self, reason: str) -> None:
        """Unhealthy, and probed with backoff until it answers (the one way back to healthy)."""
        self._healthy = False
        self.unreachable = True
        self._reachable.clear()
        self.lost = {"url": self.base_url, "reason": reason, "at": time.time()}
        if self._reach_task is None or self._reach_task.done():
            self._reach_task = asyncio.create_task(
                self._reach_loop(), name="comfyui-reach", context=background_context()
            )

    def _answering(self) -> None:
        self._healthy = True
        self._answered = True
        self.unreachable = False
        self.died.clear()
        self._reachable.set()

    async def _reach_loop(self) -> None:
        """Probe a ComfyUI that went away (or never answered) with backoff until it answers again."""
        t0, delay, probes = time.monotonic(), REACH_BASE_S, 0
        while not self._stopping:
            await asyncio.sleep(delay)
            probes += 1
            state, why = await self._reach()
            if state == "up":
                self._answering()
                log.info("comfy_reachable", url=self.base_url, down_s=round(time.monotonic() - t0, 1), probes=probes)
                if self.on_reachable is not None:
                    self.on_reachable()
                return
            log.debug("comfy_still_unreachable", url=self.base_url, reason=why, retry_in_s=delay)
            delay = min(delay * 2, REACH_MAX_S)

    async def _port_taken(self) -> bool:
        """True when something already answers on COMFY_LISTEN:COMFY_PORT (checked before each launch)."""
        host = self.settings.comfy_listen
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, self.settings.comfy_port), 2.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _launch(self) -> None:
        argv, cwd = self.command()
        self.died.clear()
        self._healthy = False
        if await self._port_taken():
            # otherwise our child fails to bind only after its imports (seconds), and meanwhile /system_stats
            # answers from the other server: the worker would adopt it and run tasks on someone else's ComfyUI
            # (seen on the GPU machine: an orphaned ComfyUI whose log pipe was gone failed every prompt)
            raise EngineStartupError(
                f"COMFY_PORT={self.settings.comfy_port}: something already listens on "
                f"{self.settings.comfy_listen}:{self.settings.comfy_port} (another ComfyUI, or one left by a worker "
                "that was killed); stop it, choose another COMFY_PORT, or attach to it with COMFY_URL"
            )
        log.info("comfyui_starting", argv=argv, cwd=str(cwd))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=self.child_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise EngineStartupError(f"cannot launch ComfyUI ({argv[0]}): {exc}") from exc
        proc = self._proc
        self._reader = asyncio.create_task(
            self._read_output(proc), name="comfyui-output", context=background_context()
        )
        started = time.monotonic()
        deadline = started + self.settings.comfy_startup_timeout
        while True:
            if proc.returncode is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
                raise EngineStartupError(
                    f"ComfyUI exited with code {proc.returncode} during start-up; last line: "
                    f"{self.tail[-1] if self.tail else '(no output)'}",
                    details={"exit_code": proc.returncode, "log_tail": self.log_tail()},
                )
            if await self._probe():
                break
            if time.monotonic() >= deadline:
                await self._terminate(proc, 5.0)
                raise EngineStartupError(
                    f"ComfyUI did not answer /system_stats within "
                    f"{self.settings.comfy_startup_timeout:.0f} s (COMFY_STARTUP_TIMEOUT)",
                    details={"log_tail": self.log_tail()},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.25)
        self._healthy = True
        self._ready_at = time.monotonic()
        log.info("comfyui_ready", pid=proc.pid, url=self.base_url, startup_s=round(self._ready_at - started, 2))
        self._watcher = asyncio.create_task(
            self._watch(proc), name="comfyui-watch", context=background_context()
        )

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than the stream limit: read what is there
                raw = await proc.stdout.read(65536)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            log.info("comfyui_output", line=line)
            for watch in self.line_watchers:
                try:
                    watch(line)
                except Exception as exc:  # a watcher's bug must not stop the pipe being read
                    log.warning("comfyui_output_watcher_failed", error=repr(exc))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping or proc is not self._proc:
            return
        self._healthy = False
        uptime = time.monotonic() - self._ready_at
        log.error("comfyui_exited", exit_code=code, uptime_s=round(uptime, 1), log_tail=self.log_tail(20))
        self.died.set()
        if self.on_exit is not None:
            self.on_exit(code)
        if uptime >= self.min_uptime_s:
            self._failures_in_row = 0
        if self.auto_restart and (self._restart_task is None or self._restart_task.done()):
            self._restart_task = asyncio.create_task(
                self._restart_loop(), name="comfyui-restart", context=background_context()
            )

    # --- restart / ensure -------------------------------------------------------------------------------

    async def _restart_loop(self) -> None:
        with contextlib.suppress(EngineStartupError):
            await self.ensure_running()

    async def ensure_running(self) -> None:
        """Return when ComfyUI answers; restart it with backoff if it died (EngineStartupError after
        COMFY_RESTART_MAX failed restarts in a row). Attached: probe it (one that refuses went away); when it went
        away (or never answered), wait up to COMFY_STARTUP_TIMEOUT until it answers again, else EngineGone."""
        if self.attached:
            await self._ensure_attached()
            return
        async with self._lock:
            while not (self._proc is not None and self._proc.returncode is None and self._healthy):
                if self._stopping:
                    raise EngineUnavailable("ComfyUI is stopping")
                if self._failures_in_row >= self.settings.comfy_restart_max:
                    raise EngineStartupError(
                        f"ComfyUI failed {self._failures_in_row} restarts in a row (COMFY_RESTART_MAX="
                        f"{self.settings.comfy_restart_max})",
                        details={"log_tail": self.log_tail()},
                    )
                delay = min(self.backoff_max_s, self.backoff_base_s * 2**self._failures_in_row)
                self._failures_in_row += 1
                log.warning("comfyui_restarting", attempt=self._failures_in_row, delay_s=delay)
                await asyncio.sleep(delay)
                try:
                    await self._launch()
                    self.restarts += 1
                except EngineStartupError as exc:
                    log.error("comfyui_restart_failed", error=str(exc), attempt=self._failures_in_row)
                    if self._proc is not None and self._proc.returncode is None:
                        await self._terminate(self._proc, 5.0)

    async def _ensure_attached(self) -> None:
        if self._stopping:
            raise EngineUnavailable("ComfyUI is stopping")
        if not self.unreachable and not self._healthy:  # never started: attach now (waits COMFY_STARTUP_TIMEOUT)
            await self._attach()
        else:
            if not self.unreachable:
                state, why = await self._reach()
                if state == "gone":  # the probe is the only one to know: as if its websocket had dropped
                    self._went_away(why)
                # "busy": alive (stalled or busy), left to the task's timers, as in _check_attached
            if self.unreachable:  # wait for the backoff probe to find it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reachable.wait(), self.settings.comfy_startup_timeout)
        if self._healthy:
            return
        lost = self.lost or {}
        why = lost.get("reason", "unreachable")
        told = f"went away ({why}) and did not answer again" if self._answered else f"does not answer ({why})"
        raise EngineGone(
            f"ComfyUI at {self.base_url} {told} within {self.settings.comfy_startup_timeout:.0f} s "
            "(COMFY_STARTUP_TIMEOUT)",
            details={"url": self.base_url, "reason": lost.get("reason")},
        )

    # --- stop -------------------------------------------------------------------------------------------

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``. Idempotent; a no-op when attached."""
        self._stopping = True
        self._healthy = False
        for bg in (self._restart_task, self._check_task, self._reach_task):
            if bg is not None and not bg.done():
                bg.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bg
        if self._proc is not None:
            await self._terminate(self._proc, grace_s)
        for task in (self._watcher, self._reader):
            if task is not None and not task.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, 2.0)

    async def _terminate(self, proc: asyncio.subprocess.Process, grace_s: float) -> None:
        if proc.returncode is not None:
            return
        self._signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
            log.info("comfyui_stopped", pid=proc.pid, exit_code=proc.returncode)
        except TimeoutError:
            self._signal(proc, signal.SIGKILL)
            await proc.wait()
            log.warning("comfyui_killed", pid=proc.pid, grace_s=grace_s)

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session=True: the group is ComfyUI and its children
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _connect_failure(exc: BaseException) -> str:
    """Why a connection could not be made, in a few words ("connection refused", "connect timed out", …)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    return f"cannot connect: {exc}"
