"""ComfyUI websocket messages as typed, frozen events.

ComfyUI sends JSON text frames ``{"type": ..., "data": {...}}`` (and binary preview frames, which we drop).
:func:`parse_message` turns one frame into an :class:`Event` subclass; unknown types become
:class:`UnknownEvent` so a newer server never breaks the reader. Both the older server (no
``execution_success``, ``executing`` without ``display_node``) and current ones (``progress_state``,
``execution_success``, timestamps) parse to the same classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event. ``prompt_id`` is None for server-wide messages (``status``)."""

    type: str
    prompt_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class Status(Event):
    queue_remaining: int | None = None


@dataclass(frozen=True, kw_only=True)
class ExecutionStart(Event):
    pass


@dataclass(frozen=True, kw_only=True)
class ExecutionCached(Event):
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Executing(Event):
    """A node started; ``node is None`` (with our prompt_id) means the prompt finished, in every version."""

    node: str | None = None
    display_node: str | None = None


@dataclass(frozen=True, kw_only=True)
class Progress(Event):
    value: int = 0
    max: int = 0
    node: str | None = None


@dataclass(frozen=True, kw_only=True)
class NodeProgress:
    node_id: str
    value: float
    max: float
    state: str


@dataclass(frozen=True, kw_only=True)
class ProgressState(Event):
    """Current servers: the progress of every running node of the prompt at once."""

    nodes: tuple[NodeProgress, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Executed(Event):
    node: str = ""
    output: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ExecutionSuccess(Event):
    pass


@dataclass(frozen=True, kw_only=True)
class ExecutionError(Event):
    node_id: str | None = None
    node_type: str | None = None
    exception_type: str | None = None
    exception_message: str = ""
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ExecutionInterrupted(Event):
    node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    pass


TERMINAL = (ExecutionSuccess, ExecutionError, ExecutionInterrupted)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _traceback(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list):
        return tuple(str(x) for x in v)
    return ()


def event_from(kind: str, data: dict[str, Any]) -> Event:
    """Build the typed event for message type ``kind`` with payload ``data``."""
    pid = _str_or_none(data.get("prompt_id"))
    base: dict[str, Any] = {"type": kind, "prompt_id": pid, "data": data}
    if kind == "status":
        info = (data.get("status") or {}).get("exec_info") or {}
        remaining = info.get("queue_remaining")
        return Status(**base, queue_remaining=None if remaining is None else _int(remaining))
    if kind == "execution_start":
        return ExecutionStart(**base)
    if kind == "execution_cached":
        return ExecutionCached(**base, nodes=tuple(str(n) for n in data.get("nodes") or ()))
    if kind == "executing":
        return Executing(
            **base, node=_str_or_none(data.get("node")), display_node=_str_or_none(data.get("display_node"))
        )
    if kind == "progress":
        return Progress(
            **base,
            value=_int(data.get("value")),
            max=_int(data.get("max")),
            node=_str_or_none(data.get("node")),
        )
    if kind == "progress_state":
        nodes = tuple(
            NodeProgress(
                node_id=str(v.get("node_id", k)),
                value=float(v.get("value") or 0),
                max=float(v.get("max") or 0),
                state=str(v.get("state", "")),
            )
            for k, v in (data.get("nodes") or {}).items()
            if isinstance(v, dict)
        )
        return ProgressState(**base, nodes=nodes)
    if kind == "executed":
        return Executed(**base, node=str(data.get("node", "")), output=dict(data.get("output") or {}))
    if kind == "execution_success":
        return ExecutionSuccess(**base)
    if kind == "execution_error":
        return ExecutionError(
            **base,
            node_id=_str_or_none(data.get("node_id")),
            node_type=_str_or_none(data.get("node_type")),
            exception_type=_str_or_none(data.get("exception_type")),
            exception_message=str(data.get("exception_message", "")),
            traceback=_traceback(data.get("traceback")),
        )
    if kind == "execution_interrupted":
        return ExecutionInterrupted(
            **base, node_id=_str_or_none(data.get("node_id")), node_type=_str_or_none(data.get("node_type"))
        )
    return UnknownEvent(**base)


def parse_message(message: str | bytes) -> Event | None:
    """One websocket frame → an Event, or None for binary frames (previews) and malformed JSON."""
    if isinstance(message, bytes | bytearray):
        return None
    try:
        obj = json.loads(message)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    data = obj.get("data")
    return event_from(obj["type"], data if isinstance(data, dict) else {})
