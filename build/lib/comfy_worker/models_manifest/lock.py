"""A lock file that works on a network volume shared by several pods.

``flock`` is not reliable across hosts on network file systems, and a plain "create the file exclusively" lock
stays forever when its pod is terminated mid-download (spot pods are). So this is a *lease*:

* acquire = create ``<name>.lock`` with ``O_CREAT | O_EXCL`` and write ``{host, pid, token, since}``;
* the holder touches the file every ``refresh_s`` from a background thread while it works;
* a waiter breaks the lock when the holder is on the same host and its pid is gone, or when the file's
  mtime has not moved for ``stale_s`` seconds *of the waiter's own clock* (clock skew between pods does
  not matter: only the change of mtime is observed);
* breaking renames the file aside first, so of two waiters only one removes it.

The holder checks :attr:`LeaseLock.lost` (its file was broken or replaced) and stops writing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALE_S = 120.0
REFRESH_S = 10.0


class LeaseLock:
    def __init__(self, path: Path, *, stale_s: float = STALE_S, refresh_s: float = REFRESH_S) -> None:
        self.path = path
        self.stale_s = stale_s
        self.refresh_s = min(refresh_s, stale_s / 3)
        self.token = uuid.uuid4().hex
        self._held = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public ---------------------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says about its holder (None when there is no lock file)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def try_acquire(self) -> bool:
        """Take the lock if it is free or its holder is provably gone (dead pid on this host); never waits."""
        if self._create():
            return True
        return bool(self._holder_dead() and self._break(self._stat()) and self._create())

    def acquire(
        self,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
    ) -> bool:
        """Wait for the lock; ``on_wait(holder)`` is called once when we have to wait. False after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        seen_mtime: float | None = None
        seen_since = time.monotonic()
        while True:
            if self.try_acquire():
                return True
            st = self._stat()
            if st is not None:
                if st.st_mtime != seen_mtime:
                    seen_mtime, seen_since = st.st_mtime, time.monotonic()
                elif time.monotonic() - seen_since >= self.stale_s and self._break(st) and self._create():
                    return True
            if not told and on_wait is not None:
                on_wait(self.holder() or {})
                told = True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held and not self.lost and (self.holder() or {}).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._held = False

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- internals ------------------------------------------------------------------------------------------

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        body = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "since": time.time()}
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        self._held = True
        self._lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh, name=f"lease-{self.path.name}", daemon=True)
        self._thread.start()
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if (self.holder() or {}).get("token") != self.token:
                self._lost.set()
                return
            try:
                os.utime(self.path)
            except OSError:
                self._lost.set()
                return

    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except FileNotFoundError:
            return None

    def _holder_dead(self) -> bool:
        holder = self.holder()
        if not holder or holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _break(self, seen: os.stat_result | None) -> bool:
        """Remove a stale lock file, unless it changed since we judged it stale."""
        now = self._stat()
        if seen is None or now is None or (now.st_ino, now.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
            return False
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
        return True
