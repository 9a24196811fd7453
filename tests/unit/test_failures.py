"""The daemon's decision for a failed task, without a daemon: abandon, release (not the task's fault) or fail,
retryable per the exception tree."""

from __future__ import annotations

import asyncio
import errno

import pytest

from comfy_worker.errors import (
    EngineOutOfMemory,
    EngineStartupError,
    ExecutionInterrupted,
    InputRejected,
    LeaseLost,
)
from comfy_worker.failures import Outcome, decide


def outcome(exc: BaseException, reason: str | None = None, disk: bool = False) -> Outcome:
    return decide(exc, reason, engine_title="Wan2GP", engine_log_tail=lambda: "last line",
                  disk_fault=lambda _e: disk, elapsed_s=1.23456)


@pytest.mark.parametrize(("exc", "reason", "action", "why"), [
    (LeaseLost("gone"), None, "abandon", "lease_lost"),
    (ExecutionInterrupted("stop"), "cancelled", "abandon", "cancelled"),
    (ExecutionInterrupted("stop"), "shutdown", "release", "shutdown"),
    (asyncio.CancelledError(), None, "release", "shutdown"),
    (EngineStartupError("Wan2GP failed 6 times in a row"), None, "release", "engine_start_failed"),
    (OSError(errno.ENOSPC, "No space left on device"), None, "release", "disk_full"),
])
def test_not_the_tasks_fault_is_abandoned_or_released(exc: BaseException, reason: str | None, action: str,
                                                      why: str) -> None:
    o = outcome(exc, reason, disk=isinstance(exc, OSError))
    assert (o.action, o.reason) == (action, why)


def test_failures_carry_the_error_and_whether_to_retry() -> None:
    bad = outcome(InputRejected("params.strength is not a parameter of i2v tasks", details={"field": "strength"}))
    assert bad.action == "fail" and not bad.retryable and bad.details["field"] == "strength"
    assert bad.details["error_type"] == "InputRejected" and bad.details["elapsed_s"] == 1.235
    oom = outcome(EngineOutOfMemory("Wan2GP: CUDA out of memory"))
    assert oom.retryable and oom.message == "Wan2GP: CUDA out of memory"
    assert outcome(ExecutionInterrupted("someone pressed cancel")).retryable  # not asked for here: try again
    died = outcome(ExecutionInterrupted("x"), "engine_died")
    assert died.retryable and died.message.startswith("Wan2GP died while running this task")
    assert died.details["log_tail"] == "last line" and died.details["error_type"] == "EngineUnavailable"
    bug = outcome(KeyError("k"))
    assert bug.message == "unexpected KeyError: 'k'" and bug.details["traceback"] and bug.retryable  # unforeseen
