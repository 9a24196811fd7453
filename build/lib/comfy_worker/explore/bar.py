"""A progress bar for long exploration work: counts, elapsed time and ETA on one live line (a TTY), or a line
per step otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Bar:
    """``Bar(total, label)``; ``advance(ok=True)`` per finished item, ``note(text)`` for what is happening now.

    The ETA is measured only on items finished in this process (items already done when it started, e.g. on
    resume, count towards the total but not the rate)."""

    def __init__(self, total: int, label: str, *, done: int = 0, stream: TextIO | None = None, width: int = 24) -> None:
        self.total = max(total, 0)
        self.label = label
        self.done = done
        self.failed = 0
        self._start_done = done
        self._t0 = time.monotonic()
        self._note = ""
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._width = width
        self._last = ""
        self._last_plain = 0.0

    def advance(self, *, ok: bool = True, n: int = 1) -> None:
        self.done += n
        if not ok:
            self.failed += n
        self._render(force=True)

    def update(self, done: int) -> None:
        """Set the count (for work reported as a position, e.g. a task's percent)."""
        if done != self.done:
            self.done = min(max(done, 0), self.total)
            self._render()

    def note(self, text: str) -> None:
        self._note = text
        self._render()

    def eta(self) -> float | None:
        made = self.done - self._start_done
        if made <= 0:
            return None
        per = (time.monotonic() - self._t0) / made
        return per * (self.total - self.done)

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        eta = self.eta()
        parts = [f"{self.label} [{bar}] {self.done}/{self.total}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"elapsed {fmt_seconds(time.monotonic() - self._t0)}")
        parts.append(f"ETA {fmt_seconds(eta)}" if eta is not None else "ETA --:--")
        if self._note:
            parts.append(self._note)
        return "  ".join(parts)

    def _render(self, force: bool = False) -> None:
        text = self.line()
        if self._tty:
            if text != self._last:
                self._stream.write("\r\x1b[2K" + text)
                self._stream.flush()
        elif force or time.monotonic() - self._last_plain >= 10:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last_plain = time.monotonic()
        self._last = text

    def close(self) -> None:
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()
        self._last = ""
