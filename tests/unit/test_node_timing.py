"""NodeClock: per-node wall time of a prompt from its websocket events (a fake clock drives it)."""

from __future__ import annotations

from comfy_worker.engine import events as ev
from comfy_worker.engine.node_timing import NodeClock

PID = "p1"


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def run(clock: NodeClock, now: FakeTime, script: list[tuple[float, ev.Event]]) -> None:
    for at, event in script:
        now.t = 100.0 + at
        clock.feed(event)


def test_each_node_runs_until_the_next_one_starts_and_samplers_report_their_first_step() -> None:
    now = FakeTime()
    clock = NodeClock(now)
    run(clock, now, [
        (0.0, ev.ExecutionStart(type="execution_start", prompt_id=PID)),
        (0.0, ev.Executing(type="executing", prompt_id=PID, node="1")),
        (0.5, ev.Executing(type="executing", prompt_id=PID, node="7")),  # HIGH sampler: 3 s load, 2 steps of 1 s
        (4.5, ev.Progress(type="progress", prompt_id=PID, node="7", value=1, max=2)),
        (5.5, ev.Progress(type="progress", prompt_id=PID, node="7", value=2, max=2)),
        (5.5, ev.Executing(type="executing", prompt_id=PID, node="8")),  # LOW sampler: switch 2 s, 2 steps
        (8.5, ev.Progress(type="progress", prompt_id=PID, node="8", value=1, max=2)),
        (9.5, ev.Progress(type="progress", prompt_id=PID, node="8", value=2, max=2)),
        (9.5, ev.Executing(type="executing", prompt_id=PID, node="9")),
        (9.52, ev.Executing(type="executing", prompt_id=PID, node=None)),  # old servers: the end
    ])  # fmt: skip
    workflow = {
        "1": {"class_type": "UNETLoader", "_meta": {"title": "UNETLoader"}},
        "7": {"class_type": "KSamplerAdvanced", "_meta": {"title": "Sampler (HIGH noise)"}},
        "8": {"class_type": "KSamplerAdvanced", "_meta": {"title": "Sampler (LOW noise)"}},
        "9": {"class_type": "SaveVideo"},
    }
    rows = clock.report(workflow)
    assert [r["node"] for r in rows] == ["1", "7", "8", "9"]
    by = {r["node"]: r for r in rows}
    assert by["1"] == {"node": "1", "class_type": "UNETLoader", "start_s": 0.0, "seconds": 0.5}
    assert by["7"]["title"] == "Sampler (HIGH noise)" and by["7"]["seconds"] == 5.0
    assert by["7"]["first_step_s"] == 4.0 and by["7"]["steps"] == 2
    assert by["8"]["start_s"] == 5.5 and by["8"]["first_step_s"] == 3.0
    assert by["9"]["seconds"] == 0.02
    assert [r["node"] for r in clock.report(workflow, min_seconds=0.1)] == ["1", "7", "8"]


def test_progress_of_another_node_and_an_error_end() -> None:
    now = FakeTime()
    clock = NodeClock(now)
    run(clock, now, [
        (0.0, ev.Executing(type="executing", prompt_id=PID, node="3")),
        (1.0, ev.Progress(type="progress", prompt_id=PID, node="4", value=1, max=5)),  # not the running node
        (2.0, ev.ExecutionError(type="execution_error", prompt_id=PID, node_id="3")),
        (9.0, ev.ExecutionSuccess(type="execution_success", prompt_id=PID)),  # nothing runs any more
    ])  # fmt: skip
    [row] = clock.report()
    assert row == {"node": "3", "start_s": 0.0, "seconds": 2.0}


def test_a_node_that_runs_twice_adds_up() -> None:
    now = FakeTime()
    clock = NodeClock(now)
    run(clock, now, [
        (0.0, ev.Executing(type="executing", prompt_id=PID, node="5")),
        (1.0, ev.Executing(type="executing", prompt_id=PID, node="6")),
        (1.5, ev.Executing(type="executing", prompt_id=PID, node="5")),
        (2.5, ev.ExecutionSuccess(type="execution_success", prompt_id=PID)),
    ])  # fmt: skip
    assert {r["node"]: r["seconds"] for r in clock.report()} == {"5": 2.0, "6": 0.5}
