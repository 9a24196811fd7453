"""What a task's failure means for the queue, decided without I/O (the daemon reports the outcome).

* **abandon** — the lease was lost, or the task was cancelled or taken away: report nothing more;
* **release** — not the task's fault, so another attempt (here or elsewhere) costs it nothing: shutdown, an engine
  that could not start, a full disk (the daemon checks the disk: ``disk_fault``);
* **fail** — with the message and details stored on the task; retryable per the exception tree
  (:mod:`comfy_worker.errors`), plus an interrupt nobody here asked for (someone pressed cancel in ComfyUI) and an
  engine that died under the task (it is restarted and the task retried).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.errors import (
    ComfyWorkerError,
    EngineStartupError,
    ExecutionInterrupted,
    LeaseLost,
    is_retryable,
)


@dataclass(frozen=True)
class Outcome:
    action: str  # abandon | release | fail
    reason: str = ""  # abandon / release: why
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    retryable: bool = False


def decide(
    exc: BaseException,
    cancel_reason: str | None,
    *,
    engine_title: str,
    engine_log_tail: Callable[[], str],
    disk_fault: Callable[[BaseException], bool],
    elapsed_s: float,
) -> Outcome:
    """The outcome of a task that raised ``exc`` (``cancel_reason``: why the daemon stopped it, if it did)."""
    if isinstance(exc, LeaseLost) or cancel_reason in ("cancelled", "lost"):
        return Outcome("abandon", cancel_reason or "lease_lost")
    if cancel_reason == "shutdown" or isinstance(exc, asyncio.CancelledError):
        return Outcome("release", "shutdown")
    if cancel_reason is None and isinstance(exc, EngineStartupError):
        return Outcome("release", "engine_start_failed", str(exc))
    if cancel_reason is None and disk_fault(exc):  # let a worker with room run it
        return Outcome("release", "disk_full", str(exc))
    if cancel_reason == "engine_died":
        message = f"{engine_title} died while running this task; it is being restarted and the task retried"
        details: dict[str, Any] = {"error_type": "EngineUnavailable", "log_tail": engine_log_tail()}
        retryable = True
    else:
        message = str(exc) or type(exc).__name__
        details = dict(getattr(exc, "details", {}) or {})
        details["error_type"] = type(exc).__name__
        if not isinstance(exc, ComfyWorkerError):
            details["traceback"] = traceback.format_exception(exc)[-20:]
            message = f"unexpected {type(exc).__name__}: {message}"
        retryable = is_retryable(exc) or isinstance(exc, ExecutionInterrupted)
    details["elapsed_s"] = round(elapsed_s, 3)
    return Outcome("fail", message=message, details=details, retryable=retryable)
