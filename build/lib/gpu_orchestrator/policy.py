"""The scaling policy: a pure function from what the fleet looks like to what to do about it.

No I/O, no clock: the control loop (:mod:`gpu_orchestrator.loop`) and the simulator
(:mod:`gpu_orchestrator.simulate`) build a :class:`FleetState`, call :func:`decide` and carry out the
:class:`Decision`. Two policies share the safety rules (bounds, spend cap, drain-before-terminate, hygiene):

* ``queue`` (ours): size the fleet so the backlog clears within one spawn delay plus a horizon, using recent
  task durations and the spawn delays observed (a ready worker has that whole window, a starting pod the part
  after it registers, a new pod the horizon); cancel starting pods that would register only after the backlog
  is gone, the latest-arriving first; keep a warm pool sized by Erlang C for the steady (burst-clipped)
  arrival rate; release idle workers after ``idle_timeout_s``, oldest idle first, but not below what the
  30-minute rate still needs.
* ``baseline`` (the orchestrator this replaces): desired = max(2, queued + running) capped at 10, idle timeout
  600 s, spawns in progress count as capacity, scale-down at most once a minute.

Safety rules, whatever the policy:
* never more than ``max_workers`` pods (starting + idle + busy + draining) and never more than
  ``max_hourly_spend`` per hour after spawning;
* a busy or idle worker is never terminated: it is first set ``draining``; its pod is terminated once the
  worker reports ``stopped`` or is ``lost``;
* a spawn that never registered within ``spawn_timeout_s`` is terminated;
* a spawn is cancelled only while it has not registered (the loop re-checks that atomically with
  ``cancel_spawn()``), and never below MIN_WORKERS, the warm pool or what the backlog needs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

ACTIVE = ("starting", "idle", "busy", "draining")  # statuses whose pods we pay for
CAPACITY = ("starting", "idle", "busy")  # statuses that can take work now or soon


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the policy sees it."""

    worker_id: str
    status: str  # starting | idle | busy | draining | stopped | lost
    age_s: float = 0.0  # since the workers row was created (spawn time for pods we started)
    idle_s: float = 0.0  # how long an idle worker has had nothing to do
    pod_id: str | None = None
    cost_per_hour: float | None = None  # None: use PolicyParams.pod_cost_per_hour
    pod_terminated: bool = False  # we already terminated its pod (stopped / lost rows stay in the table)
    spawn_cancelled: bool = False  # cancelled before it registered (draining; it never holds a task)


@dataclass(frozen=True, slots=True)
class FleetState:
    queued_by_type: Mapping[str, int] = field(default_factory=dict)
    running: int = 0
    oldest_queued_age_s: float = 0.0
    recent_durations_s: tuple[float, ...] = ()
    arrival_rate_per_s: float = 0.0  # tasks created per second over the last 10 minutes
    workers: tuple[WorkerView, ...] = ()
    last_scale_down_at: float | None = None  # when the policy last drained something (cooldown)
    arrivals_per_min: tuple[int, ...] = ()  # tasks created in each of the last minutes (30), oldest first
    recent_spawn_delays_s: tuple[float, ...] = ()  # pod created -> worker registered, recent spawns of ours

    @property
    def queued(self) -> int:
        return sum(self.queued_by_type.values())

    def count(self, *statuses: str) -> int:
        return sum(1 for w in self.workers if w.status in statuses)


@dataclass(frozen=True, slots=True)
class PolicyParams:
    kind: Literal["queue", "baseline"] = "queue"
    min_workers: int = 0
    max_workers: int = 10
    max_hourly_spend: float = math.inf
    pod_cost_per_hour: float = 0.69
    idle_timeout_s: float = 15.0
    spawn_timeout_s: float = 900.0
    # queue policy
    backlog_horizon_s: float = 30.0  # clear the queue within one spawn delay plus this long
    target_wait_s: float = 120.0  # an older queued task adds a worker at once
    default_task_duration_s: float = 60.0  # before any task finished
    staffing_beta: float = 1.5  # warm workers = load + beta * sqrt(load); 0 turns it off
    expected_spawn_s: float = 180.0  # pod create -> worker registered, until spawns have been observed
    trend: bool = False  # staff for the arrival rate projected one spawn delay ahead (ramps are predictable)
    warm_p: float = 0.3  # keep one worker warm when P(a task arrives within a spawn delay) >= this
    target_p_wait: float = 0.08  # > 0: staff with Erlang C, the fewest workers for P(wait) <= this
    single_warm_below_load: float = 0.5  # with Erlang C: at most one warm worker while the load is this low
    rate_window_min: int = 10  # staff up for the arrivals of the last N minutes; keep for all given minutes
    scale_down_cooldown_s: float = 0.0
    spawn_aware: bool = True  # backlog rule counts when starting pods arrive; cancels those it will not need

    @classmethod
    def baseline(cls, **overrides: Any) -> PolicyParams:
        base: dict[str, Any] = dict(
            kind="baseline", min_workers=2, max_workers=10, idle_timeout_s=600.0, scale_down_cooldown_s=60.0
        )
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True, slots=True)
class Action:
    worker_id: str
    reason: str
    pod_id: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    spawn: int
    spawn_reason: str
    drain: tuple[Action, ...]
    terminate: tuple[Action, ...]
    inputs: dict[str, Any]
    cancel: tuple[Action, ...] = ()  # spawns not registered yet that the backlog will not need

    @property
    def action(self) -> str:
        parts = []
        if self.spawn:
            parts.append(f"spawn {self.spawn}")
        if self.drain:
            parts.append(f"drain {len(self.drain)}")
        if self.terminate:
            parts.append(f"terminate {len(self.terminate)}")
        if self.cancel:
            parts.append(f"cancel {len(self.cancel)}")
        return ", ".join(parts) or "hold"

    def log_fields(self) -> dict[str, Any]:
        """Everything one structured log event needs: inputs, desired, action and reasons."""
        return {
            **self.inputs,
            "desired": self.desired,
            "action": self.action,
            "spawn": self.spawn,
            "spawn_reason": self.spawn_reason,
            "drain": [{"worker_id": a.worker_id, "reason": a.reason} for a in self.drain],
            "terminate": [{"worker_id": a.worker_id, "pod_id": a.pod_id, "reason": a.reason} for a in self.terminate],
            "cancel": [{"worker_id": a.worker_id, "pod_id": a.pod_id, "reason": a.reason} for a in self.cancel],
        }


def _cost(w: WorkerView, p: PolicyParams) -> float:
    return p.pod_cost_per_hour if w.cost_per_hour is None else w.cost_per_hour


def typical_duration(state: FleetState, p: PolicyParams) -> float:
    if state.recent_durations_s:
        return max(1.0, statistics.median(state.recent_durations_s))
    return p.default_task_duration_s


def _robust_counts(counts: tuple[int, ...]) -> list[float]:
    """Per-minute arrivals with batch spikes clipped to what a Poisson stream at the median rate could give,
    so one burst (handled by the backlog rule) does not keep a large warm pool for ten minutes."""
    med = statistics.median(counts)
    cap = med + 3 * math.sqrt(med) + 3
    return [min(float(c), cap) for c in counts]


def projected_rate(counts: tuple[int, ...], level_min: int, fallback_per_s: float, p: PolicyParams) -> float:
    """Steady arrival rate per second to staff for, from per-minute counts (oldest first), burst-clipped: the
    mean of the last ``level_min`` minutes, and with ``trend`` at least the least-squares line through all
    the counts extrapolated one spawn delay ahead, so a rising ramp is staffed before it arrives. Without
    per-minute counts: ``fallback_per_s``."""
    if len(counts) < 3:
        return fallback_per_s
    ys = _robust_counts(counts)
    level = statistics.fmean(ys[-level_min:])
    if not p.trend or len(ys) < 2 * level_min:
        return level / 60.0
    n = len(ys)
    mean = statistics.fmean(ys)
    mx = (n - 1) / 2
    xs = range(n)
    slope = sum((x - mx) * (y - mean) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    ahead = mean + slope * (n - 1 - mx + p.expected_spawn_s / 60.0)  # per minute, one spawn delay from now
    return max(level, ahead) / 60.0


def erlang_c(c: int, load: float) -> float:
    """P(an arrival waits) in an M/M/c queue with offered load ``load`` (1 when c <= load)."""
    if load <= 0:
        return 0.0
    if c <= load:
        return 1.0
    term, total = 1.0, 1.0  # a^k/k!, running sum for k < c
    for k in range(1, c):
        term *= load / k
        total += term
    top = term * load / (c - load)
    return top / (total + top)


def erlang_c_servers(load: float, target: float, limit: int = 1000) -> int:
    """Fewest servers c for which an M/M/c queue with offered load ``load`` makes P(wait > 0) <= target."""
    if load <= 0:
        return 0
    c = max(1, math.ceil(load))
    while c < limit and erlang_c(c, load) > target:
        c += 1
    return c


def _staffing(rate: float, mean_d: float, p: PolicyParams) -> int:
    """Workers to keep ready for a Poisson stream: Erlang C (``target_p_wait``) or square-root staffing
    (Halfin-Whitt, load + beta * sqrt(load)); one warm worker when a task is likely within a spawn delay."""
    load = rate * mean_d
    if p.target_p_wait > 0:
        n = erlang_c_servers(load, p.target_p_wait, p.max_workers + 1)
        if load < p.single_warm_below_load:  # quiet: one warm worker at most, and only if it will be used
            n = 1 if 1 - math.exp(-rate * p.expected_spawn_s) >= p.warm_p else 0
    elif p.staffing_beta > 0 and load > 0:
        n = math.ceil(load + p.staffing_beta * math.sqrt(load) - 1e-9)
    else:
        n = 0
    if p.warm_p > 0 and n < 1 and 1 - math.exp(-rate * p.expected_spawn_s) >= p.warm_p:
        n = 1
    return n


def _eta(w: WorkerView, p: PolicyParams) -> float:
    """Seconds until a starting pod is expected to take work."""
    return max(0.0, p.expected_spawn_s - w.age_s)


def _backlog(
    state: FleetState, p: PolicyParams, d: float, live: list[WorkerView]
) -> tuple[int, str, list[WorkerView]]:
    """(workers for the backlog, why, starting pods it does not need, latest-arriving first).

    ``spawn_aware``: the work queued (plus half of what runs) must fit in the window of one spawn delay plus
    ``backlog_horizon_s``; a ready worker has the whole window, a starting pod the part after it registers, a
    new pod ``backlog_horizon_s``. Without it: running + the workers that clear the queue within the horizon.
    """
    queued, running = state.queued, state.running
    if not p.spawn_aware:
        if queued == 0:
            return running, "no queued work: keep the busy workers", []
        extra = math.ceil(queued * d / max(p.backlog_horizon_s, d))
        reason = f"backlog {queued} x {d:.0f}s over {p.backlog_horizon_s:.0f}s horizon"
        if state.oldest_queued_age_s > p.target_wait_s:
            extra += 1
            reason += f"; oldest waited {state.oldest_queued_age_s:.0f}s > {p.target_wait_s:.0f}s"
        return running + min(extra, queued), reason, []
    window = p.expected_spawn_s + p.backlog_horizon_s
    ready = sum(1 for w in live if w.status in ("idle", "busy"))
    starting = sorted((w for w in live if w.status == "starting"), key=lambda w: (-_eta(w, p), w.worker_id))
    work = queued * d + running * d / 2
    have = ready * window + sum(window - _eta(w, p) for w in starting)
    if work > have:
        extra = min(queued, math.ceil((work - have) / p.backlog_horizon_s - 1e-9))
        reason = (
            f"backlog {queued} x {d:.0f}s: {ready} ready and {len(starting)} starting cannot clear it within "
            f"{window:.0f}s"
        )
        if state.oldest_queued_age_s > p.target_wait_s:
            extra += 1
            reason += f"; oldest waited {state.oldest_queued_age_s:.0f}s > {p.target_wait_s:.0f}s"
        return ready + len(starting) + extra, reason, []
    # it fits: the busy workers, the idle ones the work needs, then the earliest-arriving starting pods
    if ready * window >= work:
        needed_ready = max(running, math.ceil(work / window - 1e-9))
        why = f"backlog {queued} x {d:.0f}s fits {ready} ready" if queued else "no queued work: keep the busy workers"
        return min(ready, needed_ready), why, starting
    have = ready * window
    keep_n = 0
    for w in reversed(starting):  # earliest to arrive first
        if have >= work:
            break
        have += window - _eta(w, p)
        keep_n += 1
    unneeded = starting[: len(starting) - keep_n]  # the latest to arrive
    return ready + keep_n, f"backlog {queued} x {d:.0f}s fits {ready} ready and {keep_n} starting", unneeded


def _desired(
    state: FleetState, p: PolicyParams, live: list[WorkerView]
) -> tuple[int, str, int, list[WorkerView]]:
    """(workers wanted now, why, workers to keep from draining, starting pods that may be cancelled)."""
    queued, running = state.queued, state.running
    if p.kind == "baseline":
        n = min(max(2, queued + running), 10)
        return n, f"baseline max(2, queued {queued} + running {running})", n, []
    d = typical_duration(state, p)
    mean_d = statistics.fmean(state.recent_durations_s) if state.recent_durations_s else d
    counts = state.arrivals_per_min
    rate = projected_rate(counts, p.rate_window_min, state.arrival_rate_per_s, p)
    staffing = _staffing(rate, mean_d, p)
    # hysteresis: release warm workers only once the longer window's rate no longer needs them either
    long_rate = projected_rate(counts, len(counts), state.arrival_rate_per_s, replace(p, trend=False))
    keep_staffing = max(staffing, _staffing(long_rate, mean_d, p))
    why_staff = f"staffing for load {rate * mean_d:.2f} (rate {rate * 3600:.0f}/h x {mean_d:.0f}s)"
    backlog, reason, unneeded = _backlog(state, p, d, live)
    # cancel only spawns beyond what the warm pool keeps (the latest-arriving of them)
    ready_or_starting = sum(1 for w in live if w.status in CAPACITY)
    cancellable = unneeded[: max(0, ready_or_starting - max(keep_staffing, running))]
    keep = max(keep_staffing, backlog)
    if staffing > backlog:
        return staffing, (reason + "; " if queued else "") + why_staff, keep, cancellable
    return backlog, reason, keep, cancellable


def spawn_delay(state: FleetState, p: PolicyParams) -> float:
    """How long a new pod takes to take work: the median of the recent spawns observed, else the setting."""
    return statistics.median(state.recent_spawn_delays_s) if state.recent_spawn_delays_s else p.expected_spawn_s


def decide(state: FleetState, params: PolicyParams, now: float) -> Decision:
    """What to do now. ``now`` is only compared with ``state.last_scale_down_at`` (same clock)."""
    p = replace(params, expected_spawn_s=spawn_delay(state, params))
    workers = state.workers
    terminate: list[Action] = []
    drain: list[Action] = []

    # hygiene: pods whose worker is gone, exited after draining, or never registered
    for w in workers:
        if w.pod_terminated or (w.pod_id is None and w.status != "starting"):
            continue
        if w.status == "stopped":
            terminate.append(Action(w.worker_id, "worker stopped (drained or exited): release its pod", w.pod_id))
        elif w.status == "lost":
            terminate.append(Action(w.worker_id, "worker lost (heartbeat older than the lease)", w.pod_id))
        elif w.status == "draining" and w.spawn_cancelled:
            terminate.append(Action(w.worker_id, "spawn cancelled: release its pod", w.pod_id))
        elif w.status == "starting" and w.age_s > p.spawn_timeout_s:
            terminate.append(
                Action(
                    w.worker_id,
                    f"never registered within SPAWN_TIMEOUT_S ({w.age_s:.0f}s > {p.spawn_timeout_s:.0f}s)",
                    w.pod_id,
                )
            )
    stuck = {a.worker_id for a in terminate}
    live = [w for w in workers if w.status in ACTIVE and w.worker_id not in stuck]
    raw_desired, why, raw_keep, unneeded = _desired(state, p, live)
    desired = max(p.min_workers, min(p.max_workers, raw_desired))
    keep = max(desired, min(p.max_workers, raw_keep))
    capacity = sum(1 for w in live if w.status in CAPACITY)
    pods = len(live)
    spend = sum(_cost(w, p) for w in live)

    # scale up
    spawn = 0
    spawn_reason = "enough capacity"
    if desired > capacity:
        room_workers = p.max_workers - pods
        room_spend = (
            math.floor((p.max_hourly_spend - spend) / p.pod_cost_per_hour + 1e-9)
            if math.isfinite(p.max_hourly_spend) and p.pod_cost_per_hour > 0
            else desired
        )
        spawn = max(0, min(desired - capacity, room_workers, room_spend))
        spawn_reason = why
        if spawn < desired - capacity:
            spawn_reason += (
                f"; capped by MAX_WORKERS ({p.max_workers})"
                if room_workers <= room_spend
                else f"; capped by MAX_HOURLY_SPEND ({p.max_hourly_spend}/h)"
            )

    # cancel spawns the backlog will not need (billed while starting), the latest to arrive first, before
    # draining anyone idle (ready now)
    cancel: tuple[Action, ...] = ()
    if spawn == 0:
        cancel = tuple(
            Action(w.worker_id, f"not needed: the backlog clears before it registers (eta {_eta(w, p):.0f}s)", w.pod_id)
            for w in unneeded[: max(0, capacity - keep)]
        )

    # scale down: idle workers beyond what is needed, idle longest first
    cooled = state.last_scale_down_at is None or now - state.last_scale_down_at >= p.scale_down_cooldown_s
    if spawn == 0 and cooled:
        idle = sorted((w for w in live if w.status == "idle"), key=lambda w: (-w.idle_s, w.worker_id))
        surplus = capacity - len(cancel) - keep
        # MAX_WORKERS lowered under a running fleet: shed capacity beyond it (draining pods leave by themselves;
        # cancelled spawns count first)
        over_cap = capacity - len(cancel) - p.max_workers
        for w in idle:
            if over_cap > 0:
                drain.append(Action(w.worker_id, f"over MAX_WORKERS ({p.max_workers})", w.pod_id))
                over_cap -= 1
                surplus -= 1
            elif surplus > 0 and w.idle_s >= p.idle_timeout_s:
                drain.append(
                    Action(
                        w.worker_id,
                        f"idle {w.idle_s:.0f}s >= IDLE_TIMEOUT_S {p.idle_timeout_s:.0f}s",
                        w.pod_id,
                    )
                )
                surplus -= 1

    inputs = {
        "policy": p.kind,
        "queued": state.queued,
        "queued_by_type": dict(state.queued_by_type),
        "running": state.running,
        "oldest_queued_age_s": round(state.oldest_queued_age_s, 1),
        "typical_duration_s": round(typical_duration(state, p), 1),
        "spawn_delay_s": round(p.expected_spawn_s, 1),
        "arrivals_per_h": round(
            projected_rate(state.arrivals_per_min, p.rate_window_min, state.arrival_rate_per_s, p) * 3600, 1
        ),
        "workers": {s: state.count(s) for s in ("starting", "idle", "busy", "draining", "stopped", "lost")},
        "capacity": capacity,
        "pods": pods,
        "spend_per_hour": round(spend, 3),
    }
    return Decision(desired, spawn, spawn_reason, tuple(drain), tuple(terminate), inputs, cancel)
