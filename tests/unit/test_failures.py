"""The daemon's decision for a failed task, without a daemon: abandon, release (not the task's fault) or fail,
retryable per the exception tree."""

from __future__ import annotations

import asyncio
import errno

import pytest

from comfy_worker.errors import (
    EngineGone,
    EngineOutOfMemory,
    EngineStartupError,
    ExecutionInterrupted,
    ExecutionTimeout,
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
    (EngineGone("ComfyUI at http://h:8188 went away (connection refused) and did not answer again"), None, "release",
     "engine_unreachable"),
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


GONE = {"url": "http://127.0.0.1:8188", "reason": "connection refused", "at": 1.0}


def comfy(exc: BaseException, reason: str | None, gone: dict | None, elapsed_s: float = 2.0) -> Outcome:
    return decide(exc, reason, engine_title="ComfyUI", engine_log_tail=lambda: "tail", disk_fault=lambda _e: False,
                  elapsed_s=elapsed_s, engine_gone=gone)


def test_an_attached_comfyui_that_went_away_fails_the_running_task_retryably_naming_url_and_prompt() -> None:
    o = comfy(ExecutionInterrupted("prompt p-1 was cancelled", details={"prompt_id": "p-1"}), "engine_died", GONE)
    assert o.action == "fail" and o.retryable  # like a crashed child: the attempt is spent, the task retried
    assert o.message.startswith("ComfyUI at http://127.0.0.1:8188 went away (connection refused) while running "
                                "prompt p-1")
    assert o.details == {"error_type": "EngineGone", "url": "http://127.0.0.1:8188", "reason": "connection refused",
                         "prompt_id": "p-1", "elapsed_s": 2.0}
    early = comfy(ExecutionInterrupted("x"), "engine_died", GONE)  # stopped before a prompt was known
    assert "went away (connection refused) while running this task" in early.message and early.retryable


def test_a_stall_is_a_stall_and_a_crashed_child_a_crash_whatever_the_engine_last_did() -> None:
    stall = ExecutionTimeout("prompt p-2 made no progress for 5 s", details={"prompt_id": "p-2", "stall_s": 5})
    o = comfy(stall, None, GONE)  # the server went away once, earlier: this task was not stopped for it
    assert o.action == "fail" and o.retryable and o.message == "prompt p-2 made no progress for 5 s"
    assert o.details["error_type"] == "ExecutionTimeout" and "url" not in o.details
    child = comfy(ExecutionInterrupted("x"), "engine_died", None)
    assert child.message.startswith("ComfyUI died while running this task; it is being restarted")
    assert child.details["log_tail"] == "tail"
