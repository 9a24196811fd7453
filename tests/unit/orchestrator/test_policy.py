"""Properties of the scaling policy, for any fleet hypothesis can think of, and a few worked examples."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_orchestrator.policy import ACTIVE, FleetState, PolicyParams, WorkerView, decide, erlang_c_servers

STATUSES = ("starting", "idle", "busy", "draining", "stopped", "lost")


@st.composite
def workers(draw: st.DrawFn) -> tuple[WorkerView, ...]:
    n = draw(st.integers(0, 14))
    out = []
    for i in range(n):
        status = draw(st.sampled_from(STATUSES))
        out.append(
            WorkerView(
                worker_id=f"w{i}",
                status=status,
                age_s=draw(st.floats(0, 5000)),
                idle_s=draw(st.floats(0, 3000)) if status == "idle" else 0.0,
                pod_id=draw(st.sampled_from([f"pod{i}", None])),
                cost_per_hour=draw(st.sampled_from([None, 0.2, 0.44, 1.5])),
                pod_terminated=draw(st.booleans()) if status in ("stopped", "lost") else False,
                spawn_cancelled=draw(st.booleans()) if status == "draining" else False,
            )
        )
    return tuple(out)


@st.composite
def states(draw: st.DrawFn) -> FleetState:
    ws = draw(workers())
    return FleetState(
        queued_by_type=draw(st.dictionaries(st.sampled_from(["comfy", "i2v"]), st.integers(0, 200), max_size=2)),
        running=sum(1 for w in ws if w.status == "busy"),
        oldest_queued_age_s=draw(st.floats(0, 3600)),
        recent_durations_s=tuple(draw(st.lists(st.floats(1, 900), max_size=8))),
        arrival_rate_per_s=draw(st.floats(0, 0.5)),
        workers=ws,
        last_scale_down_at=draw(st.sampled_from([None, 0.0, 990.0])),
    )


params_st = st.builds(
    PolicyParams,
    kind=st.sampled_from(["queue", "baseline"]),
    min_workers=st.integers(0, 3),
    max_workers=st.integers(1, 12),
    max_hourly_spend=st.sampled_from([math.inf, 0.5, 2.0, 5.0]),
    pod_cost_per_hour=st.sampled_from([0.2, 0.44, 1.0]),
    idle_timeout_s=st.sampled_from([0.0, 60.0, 600.0]),
    spawn_timeout_s=st.sampled_from([60.0, 900.0]),
)


def _spend(state: FleetState, p: PolicyParams, skip: set[str]) -> float:
    return sum(
        p.pod_cost_per_hour if w.cost_per_hour is None else w.cost_per_hour
        for w in state.workers
        if w.status in ACTIVE and w.worker_id not in skip
    )


@settings(max_examples=400, deadline=None)
@given(states(), params_st)
def test_never_above_max_workers_or_the_spend_cap(state: FleetState, p: PolicyParams):
    d = decide(state, p, now=1000.0)
    gone = {a.worker_id for a in d.terminate}
    pods = sum(1 for w in state.workers if w.status in ACTIVE and w.worker_id not in gone)
    if d.spawn:
        assert pods + d.spawn <= p.max_workers
        assert _spend(state, p, gone) + d.spawn * p.pod_cost_per_hour <= p.max_hourly_spend + 1e-6
    assert d.spawn >= 0 and d.desired <= max(p.max_workers, p.min_workers)


@settings(max_examples=400, deadline=None)
@given(states(), params_st)
def test_never_terminates_a_busy_or_idle_worker_and_drains_only_idle_ones(state: FleetState, p: PolicyParams):
    d = decide(state, p, now=1000.0)
    by_id = {w.worker_id: w for w in state.workers}
    for a in d.terminate:
        w = by_id[a.worker_id]
        # drained/gone first, a stuck spawn, or a cancelled spawn (draining, it never holds a task)
        assert w.status in ("stopped", "lost", "starting") or (w.status == "draining" and w.spawn_cancelled)
        assert not w.pod_terminated
    for a in d.drain:
        assert by_id[a.worker_id].status == "idle"
    for a in d.cancel:  # only spawns that have not registered (the loop re-checks that atomically)
        assert by_id[a.worker_id].status == "starting"
    acted = [{a.worker_id for a in group} for group in (d.drain, d.terminate, d.cancel)]
    assert not (acted[0] & acted[1] or acted[0] & acted[2] or acted[1] & acted[2])


@settings(max_examples=400, deadline=None)
@given(states(), params_st)
def test_cancelling_spawns_never_leaves_less_capacity_than_desired(state: FleetState, p: PolicyParams):
    d = decide(state, p, now=1000.0)
    if not d.cancel:
        return
    gone = {a.worker_id for a in (*d.terminate, *d.cancel, *d.drain)}
    left = sum(1 for w in state.workers if w.status in ("starting", "idle", "busy") and w.worker_id not in gone)
    assert d.spawn == 0 and left >= min(d.desired, p.max_workers) and d.desired >= p.min_workers


@settings(max_examples=200, deadline=None)
@given(states(), params_st)
def test_reacts_to_a_stuck_spawn(state: FleetState, p: PolicyParams):
    stuck = WorkerView("stuck", "starting", age_s=p.spawn_timeout_s + 1, pod_id="pod-stuck")
    d = decide(_with(state, stuck), p, now=1000.0)
    assert "stuck" in {a.worker_id for a in d.terminate}


def _with(state: FleetState, extra: WorkerView) -> FleetState:
    return FleetState(
        state.queued_by_type,
        state.running,
        state.oldest_queued_age_s,
        state.recent_durations_s,
        state.arrival_rate_per_s,
        (*state.workers, extra),
        state.last_scale_down_at,
    )


def test_idle_workers_are_drained_oldest_idle_first_and_only_past_the_timeout():
    ws = (
        WorkerView("a", "idle", idle_s=500, pod_id="pa"),
        WorkerView("b", "idle", idle_s=900, pod_id="pb"),
        WorkerView("c", "idle", idle_s=10, pod_id="pc"),
    )
    d = decide(FleetState(workers=ws), PolicyParams(idle_timeout_s=300), now=0)
    assert [a.worker_id for a in d.drain] == ["b", "a"] and d.spawn == 0 and not d.terminate


def test_drained_worker_that_stopped_has_its_pod_terminated():
    d = decide(FleetState(workers=(WorkerView("a", "stopped", pod_id="pa"),)), PolicyParams(), now=0)
    assert [(a.worker_id, a.pod_id) for a in d.terminate] == [("a", "pa")]


def test_queue_policy_sizes_to_the_backlog_and_baseline_to_queued_plus_running():
    state = FleetState(queued_by_type={"comfy": 40}, recent_durations_s=(60.0,) * 5)
    ours = decide(state, PolicyParams(backlog_horizon_s=240, max_workers=20), now=0)
    assert ours.spawn == 10 and "backlog 40" in ours.spawn_reason
    base = decide(state, PolicyParams.baseline(), now=0)
    assert base.spawn == 10  # capped at 10
    starting = FleetState(
        queued_by_type={"comfy": 3},
        workers=tuple(WorkerView(f"s{i}", "starting", pod_id=f"p{i}") for i in range(3)),
    )
    assert decide(starting, PolicyParams.baseline(), now=0).spawn == 0  # spawns in progress count


def test_baseline_scales_down_at_most_once_a_minute():
    ws = tuple(WorkerView(f"w{i}", "idle", idle_s=700, pod_id=f"p{i}") for i in range(4))
    p = PolicyParams.baseline()
    assert len(decide(FleetState(workers=ws), p, now=100).drain) == 2  # down to min 2
    assert decide(FleetState(workers=ws, last_scale_down_at=70), p, now=100).drain == ()


def test_spend_cap_limits_spawns():
    d = decide(
        FleetState(queued_by_type={"comfy": 50}),
        PolicyParams(max_hourly_spend=1.0, pod_cost_per_hour=0.44),
        now=0,
    )
    assert d.spawn == 2 and "MAX_HOURLY_SPEND" in d.spawn_reason


def test_erlang_c_staffing_matches_the_textbook_table():
    # M/M/c with offered load 4: P(wait) is 0.059 with 8 servers and 0.024 with 9
    assert erlang_c_servers(4.0, 0.06) == 8 and erlang_c_servers(4.0, 0.05) == 9
    assert erlang_c_servers(0.0, 0.05) == 0


def test_a_burst_does_not_buy_a_warm_pool_but_a_steady_stream_does():
    quiet = PolicyParams(target_p_wait=0.08, warm_p=0.3)
    burst = FleetState(arrivals_per_min=(0,) * 29 + (40,), recent_durations_s=(60.0,))
    assert decide(burst, quiet, now=0).desired == 1  # clipped to 3/min: one warm worker, not 8
    steady = FleetState(arrivals_per_min=(4,) * 30, recent_durations_s=(60.0,))
    assert decide(steady, quiet, now=0).desired == erlang_c_servers(4.0, 0.08) == 8


def test_warm_workers_are_kept_while_the_half_hour_rate_still_needs_them():
    ws = tuple(WorkerView(f"w{i}", "idle", idle_s=100, pod_id=f"p{i}") for i in range(8))
    p = PolicyParams(target_p_wait=0.08, idle_timeout_s=15)
    fading = FleetState(arrivals_per_min=(4,) * 20 + (0,) * 10, recent_durations_s=(60.0,), workers=ws)
    d = decide(fading, p, now=0)
    assert d.desired == 0 or d.desired < 8  # the last 10 minutes were quiet
    assert len(d.drain) == 8 - erlang_c_servers(20 * 4 / 30, 0.08)  # but the 30-minute rate keeps some


def test_spawns_that_would_arrive_after_the_backlog_cleared_are_cancelled_latest_first():
    p = PolicyParams(expected_spawn_s=180, backlog_horizon_s=30, target_p_wait=0, staffing_beta=0, warm_p=0)
    ready = tuple(WorkerView(f"r{i}", "busy", pod_id=f"pr{i}") for i in range(4))
    starting = (
        WorkerView("early", "starting", age_s=170, pod_id="p-early"),  # registers in ~10 s
        WorkerView("late", "starting", age_s=20, pod_id="p-late"),  # in ~160 s
        WorkerView("mid", "starting", age_s=90, pod_id="p-mid"),
    )
    # 4 busy workers have 210 s each: 12 queued x 60 s + 4 running x 30 s = 840 s of work fits them alone
    state = FleetState(queued_by_type={"comfy": 12}, running=4, recent_durations_s=(60.0,) * 5,
                       workers=ready + starting)
    d = decide(state, p, now=0)
    assert d.spawn == 0 and [a.worker_id for a in d.cancel] == ["late", "mid", "early"]
    assert all("clears before it registers" in a.reason for a in d.cancel)
    # twice the work: the earliest-arriving spawns are kept, the latest still cancelled
    more = FleetState(queued_by_type={"comfy": 17}, running=4, recent_durations_s=(60.0,) * 5,
                      workers=ready + starting)
    d = decide(more, p, now=0)
    assert d.spawn == 0 and [a.worker_id for a in d.cancel] == ["late"]
    # MIN_WORKERS and the warm pool are never cancelled away
    assert not decide(state, PolicyParams(min_workers=7, expected_spawn_s=180, backlog_horizon_s=30), now=0).cancel


def test_a_cancelled_spawn_whose_pod_survived_is_terminated():
    w = WorkerView("c", "draining", age_s=300, pod_id="pc", spawn_cancelled=True)
    d = decide(FleetState(workers=(w,)), PolicyParams(), now=0)
    assert [(a.worker_id, a.pod_id) for a in d.terminate] == [("c", "pc")]
    # a worker draining because it was told to (it may hold a task) is left to finish
    busy_drain = WorkerView("b", "draining", age_s=300, pod_id="pb")
    assert not decide(FleetState(running=1, workers=(busy_drain,)), PolicyParams(), now=0).terminate
