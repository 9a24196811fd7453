"""What a task's failure means for the queue, decided without I/O (the daemon reports the outcome).

* **abandon** — the lease was lost, or the task was cancelled or taken away: report nothing more;
* **release** — not the task's fault, so another attempt (here or elsewhere) costs it nothing: shutdown, an engine
  that could not start, an attached ComfyUI that went away before the task had anything in it and did not come
  back in time (:class:`~comfy_worker.errors.EngineGone`), a full disk (the daemon checks the disk: ``disk_fault``);
* **fail** — with the message and details stored on the task; retryable per the exception tree
  (:mod:`comfy_worker.errors`), plus an interrupt nobody here asked for (someone pressed cancel in ComfyUI) and an
  engine that died under the task (``cancel_reason == "engine_died"``). That one is retryable and spends the
  attempt, whether the engine is our child (restarted) or a ComfyUI attached at COMFY_URL that went away
  (``engine_gone``: its url and why; the worker claims again once it answers): the task that was running may be
  what killed it, and ``max_attempts`` bounds such a task.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.errors import (
    ComfyWorkerError,
    EngineGone,
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
    engine_gone: dict[str, Any] | None = None,
) -> Outcome:
    """The outcome of a task that raised ``exc`` (``cancel_reason``: why the daemon stopped it, if it did;
    ``engine_gone``: an attached engine's last disappearance, ``{"url", "reason"}``, None for a child)."""
    if isinstance(exc, LeaseLost) or cancel_reason in ("cancelled", "lost"):
        return Outcome("abandon", cancel_reason or "lease_lost")
    if cancel_reason == "shutdown" or isinstance(exc, asyncio.CancelledError):
        return Outcome("release", "shutdown")
    if cancel_reason is None and isinstance(exc, EngineStartupError):
        return Outcome("release", "engine_start_failed", str(exc))
    if cancel_reason is None and isinstance(exc, EngineGone):  # it had nothing in the engine yet
        return Outcome("release", "engine_unreachable", str(exc))
    if cancel_reason is None and disk_fault(exc):  # let a worker with room run it
        return Outcome("release", "disk_full", str(exc))
    if cancel_reason == "engine_died" and engine_gone is not None:
        prompt_id = (getattr(exc, "details", None) or {}).get("prompt_id")
        running = f"prompt {prompt_id}" if prompt_id else "this task"
        message = (
            f"{engine_title} at {engine_gone.get('url')} went away ({engine_gone.get('reason')}) while running "
            f"{running}; the task is retried, and this worker claims again once it answers"
        )
        details: dict[str, Any] = {
            "error_type": EngineGone.__name__, "url": engine_gone.get("url"), "reason": engine_gone.get("reason"),
        }
        if prompt_id:
            details["prompt_id"] = prompt_id
        retryable = True
    elif cancel_reason == "engine_died":
        message = f"{engine_title} died while running this task; it is being restarted and the task retried"
        details = {"error_type": "EngineUnavailable", "log_tail": engine_log_tail()}
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
