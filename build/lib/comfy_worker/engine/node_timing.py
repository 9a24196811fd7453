"""Where a prompt's time went, node by node, from its websocket events (pure: feed events, read the report).

A node runs from its ``executing`` event to the next node's (or the prompt's end). For nodes that report
progress (samplers), ``first_step_s`` is the time from the node's start to its first reported step: model
loads and LoRA patching happen there, so for a Wan 2.2 HIGH/LOW graph the LOW sampler's ``first_step_s`` minus
one step is the HIGH -> LOW model switch. Times are wall-clock as the worker saw the events (milliseconds of
websocket latency, not GPU timers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from comfy_worker.engine import events

_END = (events.ExecutionSuccess, events.ExecutionError, events.ExecutionInterrupted)


class NodeClock:
    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._t0: float | None = None
        self._current: str | None = None
        self._since = 0.0
        self._nodes: dict[str, dict[str, Any]] = {}

    def feed(self, event: events.Event) -> None:
        t = self._now()
        if self._t0 is None and isinstance(event, events.ExecutionStart | events.Executing):
            self._t0 = t
        if isinstance(event, events.Executing):
            self._close(t)
            if event.node is not None:
                self._current, self._since = event.node, t
                entry = self._nodes.setdefault(event.node, {"node": event.node, "seconds": 0.0})
                entry.setdefault("start_s", t - (self._t0 or t))
        elif isinstance(event, events.Progress) and event.node is not None and event.node == self._current:
            entry = self._nodes[event.node]
            entry.setdefault("first_step_s", t - self._since)
            entry["steps"] = event.max
        elif isinstance(event, _END):
            self._close(t)

    def _close(self, t: float) -> None:
        if self._current is not None:
            self._nodes[self._current]["seconds"] += t - self._since
            self._current = None

    def report(self, workflow: Mapping[str, Any] | None = None, min_seconds: float = 0.0) -> list[dict[str, Any]]:
        """Nodes in the order they started, with ``class_type`` and ``title`` from ``workflow``; nodes that took
        less than ``min_seconds`` are left out (a 60-node graph need not list every 1 ms primitive)."""
        out = []
        for entry in sorted(self._nodes.values(), key=lambda e: e["start_s"]):
            if entry["seconds"] < min_seconds:
                continue
            node = (workflow or {}).get(entry["node"]) or {}
            row: dict[str, Any] = {"node": entry["node"]}
            if node.get("class_type"):
                row["class_type"] = node["class_type"]
            title = (node.get("_meta") or {}).get("title")
            if title and title != node.get("class_type"):
                row["title"] = title
            row["start_s"] = round(entry["start_s"], 3)
            row["seconds"] = round(entry["seconds"], 3)
            if "first_step_s" in entry:
                row["first_step_s"] = round(entry["first_step_s"], 3)
                row["steps"] = entry["steps"]
            out.append(row)
        return out
