"""A prompt's history entry and what it says about the prompt's end (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_worker.engine import events as ev
from comfy_worker.errors import ExecutionFailed, ExecutionInterrupted


@dataclass(frozen=True)
class History:
    """One prompt's ``/history/{id}`` entry: ``outputs`` per node id, ``status`` as ComfyUI reports it."""

    prompt_id: str
    outputs: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def status_str(self) -> str | None:
        return self.status.get("status_str")

    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        return [(m[0], m[1]) for m in self.status.get("messages") or [] if isinstance(m, list) and len(m) == 2]


def finished(hist: History) -> bool:
    if hist.status:
        return bool(hist.status.get("completed")) or hist.status.get("status_str") in ("success", "error")
    return True  # very old servers: an entry in history means it ran


def outcome(hist: History) -> History:
    if hist.status_str == "error":
        for kind, data in hist.messages():
            if kind == "execution_error":
                raise failed(hist.prompt_id, data)
            if kind == "execution_interrupted":
                raise ExecutionInterrupted(
                    f"prompt {hist.prompt_id} was interrupted at node {data.get('node_id')}",
                    details={"prompt_id": hist.prompt_id, "node_id": data.get("node_id")},
                )
        raise ExecutionFailed(f"prompt {hist.prompt_id} ended with an error", details={"prompt_id": hist.prompt_id})
    return hist


def failed(prompt_id: str, data: dict[str, Any]) -> ExecutionFailed:
    e = ev.event_from("execution_error", data)
    assert isinstance(e, ev.ExecutionError)
    return ExecutionFailed(
        f"node {e.node_id} ({e.node_type}) failed: {e.exception_type}: {e.exception_message}".strip(),
        details={
            "prompt_id": prompt_id,
            "node_id": e.node_id,
            "node_type": e.node_type,
            "exception_type": e.exception_type,
            "exception_message": e.exception_message,
            "traceback": list(e.traceback)[-30:],
        },
    )


def summarise_node_errors(node_errors: Any) -> str:
    parts: list[str] = []
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            errs = info.get("errors", []) if isinstance(info, dict) else []
            cls = info.get("class_type") if isinstance(info, dict) else None
            for err in errs[:3]:
                if isinstance(err, dict):
                    parts.append(f"node {node_id} ({cls}): {err.get('message')}: {err.get('details')}")
    return "; ".join(parts[:10])
