"""Discrete-event simulation of the fleet running the real policy (:func:`gpu_orchestrator.policy.decide`).

Model: tasks arrive from a trace and are claimed FIFO by the first idle worker (workers LISTEN, so at once).
A spawned pod is billed from creation and registers after a random spawn delay; a fraction never registers
(stuck spawns). Every ``interval_s`` the policy sees the same :class:`FleetState` the control loop builds and
its decision applied: spawn, drain (an idle worker exits after ``exit_delay_s``, a busy one after its task),
terminate (billing stops). Reports GPU-hours, cost, queue-wait percentiles and tasks completed.

    python -m gpu_orchestrator.simulate --trace bursty --hours 24 --out docs/orchestrator-figures
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_orchestrator import traces
from gpu_orchestrator.policy import Decision, FleetState, PolicyParams, WorkerView, decide


@dataclass
class SimConfig:
    interval_s: float = 15.0
    spawn_delay_s: tuple[float, float] = (120.0, 240.0)  # uniform range: pod create → worker registered
    stuck_spawn_p: float = 0.02
    exit_delay_s: float = 5.0  # a drained idle worker notices at its next heartbeat and exits
    cost_per_hour: float = 0.69
    tail_s: float = 3600.0  # keep simulating after the last arrival
    rate_window_s: float = 600.0  # arrival rate the policy sees: tasks created in this window
    per_minute_window_min: int = 30  # per-minute arrival counts the policy sees (orchestrator_fleet())
    seed: int = 7


@dataclass
class _Pod:
    wid: str
    created: float
    status: str = "starting"
    idle_since: float = 0.0
    ended: float | None = None
    task: traces.TraceTask | None = None
    stuck: bool = False


@dataclass
class SimResult:
    policy: str
    gpu_hours: float
    cost: float
    wait_p50_s: float
    wait_p95_s: float
    wait_max_s: float
    completed: int
    submitted: int
    pods_spawned: int
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list, repr=False)  # t, queued, pods, busy
    waits: list[tuple[float, float]] = field(default_factory=list, repr=False)  # arrival, wait

    def summary(self) -> dict[str, Any]:
        return {
            k: (round(v, 2) if isinstance(v, float) else v)
            for k, v in self.__dict__.items()
            if k not in ("timeline", "waits")
        }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _arrivals(times: list[float], now: float, window: float) -> int:
    return len(times) - bisect.bisect_left(times, now - window)


def _per_minute(times: list[float], now: float, minutes: int) -> tuple[int, ...]:
    """Arrivals in each of the last ``minutes`` minutes, oldest first (what orchestrator_fleet() returns)."""
    edges = [bisect.bisect_left(times, now - 60 * k) for k in range(minutes, -1, -1)]
    return tuple(b - a for a, b in itertools.pairwise(edges))


def simulate(
    trace: list[traces.TraceTask],
    params: PolicyParams,
    cfg: SimConfig | None = None,
    policy: Callable[[FleetState, PolicyParams, float], Decision] = decide,
) -> SimResult:
    """Run ``trace`` against ``policy`` (the real :func:`decide` unless a benchmark passes another, e.g. a
    clairvoyant bound)."""
    cfg = cfg or SimConfig()
    rng = random.Random(cfg.seed)
    seq = itertools.count()
    events: list[tuple[float, int, str, Any]] = []

    def push(t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    for task in trace:
        push(task.arrival_s, "arrive", task)
    end = (trace[-1].arrival_s if trace else 0.0) + cfg.tail_s
    t = 0.0
    while t <= end:
        push(t, "tick")
        t += cfg.interval_s

    queue: deque[traces.TraceTask] = deque()
    arrival_times: list[float] = []
    pods: dict[str, _Pod] = {}
    durations: deque[tuple[float, float]] = deque()  # (finished at, duration) in the last hour
    spawn_delays: deque[float] = deque(maxlen=20)  # what orchestrator_fleet() reports: the last 20 registrations
    waits: list[tuple[float, float]] = []
    timeline: list[tuple[float, int, int, int]] = []
    spawned = completed = 0
    last_scale_down: float | None = None
    gpu_seconds = 0.0

    def start(pod: _Pod, now: float) -> None:
        task = queue.popleft()
        pod.status, pod.task = "busy", task
        waits.append((task.arrival_s, now - task.arrival_s))
        push(now + task.duration_s, "finish", pod.wid)

    def became_idle(pod: _Pod, now: float) -> None:
        if pod.status == "draining":
            push(now + cfg.exit_delay_s, "exit", pod.wid)
            return
        pod.status, pod.idle_since, pod.task = "idle", now, None
        if queue:
            start(pod, now)

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            queue.append(data)
            arrival_times.append(now)
            idle = [p for p in pods.values() if p.status == "idle"]
            if idle:
                start(min(idle, key=lambda p: p.idle_since), now)
        elif kind == "ready":
            pod = pods.get(data)
            if pod and pod.status == "starting":
                spawn_delays.append(now - pod.created)
                pod.status = "idle"
                became_idle(pod, now)
        elif kind == "finish":
            pod = pods[data]
            if pod.task is not None:
                durations.append((now, pod.task.duration_s))
                completed += 1
            pod.task = None
            became_idle(pod, now)
        elif kind == "exit":
            pod = pods.get(data)
            if pod and pod.ended is None:
                pod.status = "stopped"
        elif kind == "tick":
            while durations and durations[0][0] < now - 3600:
                durations.popleft()
            by_type: dict[str, int] = {}
            for q in queue:
                by_type[q.task_type] = by_type.get(q.task_type, 0) + 1
            live = [p for p in pods.values() if p.ended is None]
            state = FleetState(
                queued_by_type=by_type,
                running=sum(1 for p in live if p.status == "busy" or (p.status == "draining" and p.task)),
                oldest_queued_age_s=(now - queue[0].arrival_s) if queue else 0.0,
                recent_durations_s=tuple(d for _, d in list(durations)[-200:]),
                arrival_rate_per_s=_arrivals(arrival_times, now, cfg.rate_window_s) / cfg.rate_window_s,
                arrivals_per_min=_per_minute(arrival_times, now, cfg.per_minute_window_min),
                recent_spawn_delays_s=tuple(spawn_delays),
                workers=tuple(
                    WorkerView(
                        p.wid,
                        p.status,
                        age_s=now - p.created,
                        idle_s=(now - p.idle_since) if p.status == "idle" else 0.0,
                        pod_id=p.wid,
                        cost_per_hour=cfg.cost_per_hour,
                    )
                    for p in live
                ),
                last_scale_down_at=last_scale_down,
            )
            decision = policy(state, params, now)
            for a in decision.terminate:
                pod = pods[a.worker_id]
                pod.ended, pod.status = now, "stopped"
                gpu_seconds += now - pod.created
            for a in decision.cancel:  # the loop cancels only a row still 'starting' (cancel_spawn())
                pod = pods[a.worker_id]
                if pod.status == "starting":
                    pod.ended, pod.status = now, "stopped"
                    gpu_seconds += now - pod.created
            if decision.drain:
                last_scale_down = now
            for a in decision.drain:
                pod = pods[a.worker_id]
                was_idle = pod.status == "idle"
                pod.status = "draining"
                if was_idle:
                    push(now + cfg.exit_delay_s, "exit", pod.wid)
            for _ in range(decision.spawn):
                spawned += 1
                pod = _Pod(f"w{spawned}", now)
                pod.stuck = rng.random() < cfg.stuck_spawn_p
                pods[pod.wid] = pod
                if not pod.stuck:
                    push(now + rng.uniform(*cfg.spawn_delay_s), "ready", pod.wid)
            live = [p for p in pods.values() if p.ended is None]
            timeline.append((now, len(queue), len(live), sum(1 for p in live if p.task is not None)))
    for pod in pods.values():
        if pod.ended is None:
            gpu_seconds += end - pod.created
    wait_values = [w for _, w in waits]
    return SimResult(
        policy=params.kind,
        gpu_hours=gpu_seconds / 3600,
        cost=gpu_seconds / 3600 * cfg.cost_per_hour,
        wait_p50_s=_pct(wait_values, 0.5),
        wait_p95_s=_pct(wait_values, 0.95),
        wait_max_s=max(wait_values, default=0.0),
        completed=completed,
        submitted=len(trace),
        pods_spawned=spawned,
        timeline=timeline,
        waits=waits,
    )


def plot(results: list[SimResult], title: str, path: str | Path) -> Path:
    """Queue depth, pods and queue wait over time, one line per policy, in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise SystemExit("plotting needs matplotlib: pip install 'comfy-worker[sim]'") from exc
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    colours = {"queue": "tab:blue", "baseline": "tab:orange"}
    for r in results:
        c = colours.get(r.policy)
        hours = [t / 3600 for t, *_ in r.timeline]
        label = f"{r.policy}: {r.gpu_hours:.1f} GPU-h, p95 wait {r.wait_p95_s:.0f}s"
        axes[0].plot(hours, [q for _, q, _, _ in r.timeline], color=c, lw=0.9, label=label)
        axes[1].plot(hours, [n for _, _, n, _ in r.timeline], color=c, lw=0.9, label=f"{r.policy} pods")
        axes[1].plot(hours, [b for *_, b in r.timeline], color=c, lw=0.6, ls=":", label=f"{r.policy} busy")
        axes[2].scatter(
            [a / 3600 for a, _ in r.waits], [w for _, w in r.waits], s=2, color=c, alpha=0.5, label=r.policy
        )
    axes[0].set_ylabel("queued tasks")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].set_ylabel("pods (billed)")
    axes[1].legend(loc="upper right", fontsize=7, ncol=2)
    axes[2].set_ylabel("queue wait (s)")
    axes[2].set_xlabel("simulated time (hours)")
    axes[2].legend(loc="upper right", fontsize=8, markerscale=4)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def compare(
    trace: list[traces.TraceTask],
    ours: PolicyParams,
    cfg: SimConfig | None = None,
    baseline: PolicyParams | None = None,
) -> list[SimResult]:
    """Our policy and the baseline on the same trace, same spawn-delay draws."""
    base = baseline or PolicyParams.baseline(pod_cost_per_hour=ours.pod_cost_per_hour)
    return [simulate(trace, ours, cfg), simulate(trace, base, cfg)]


_DEFAULTS = PolicyParams()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu_orchestrator.simulate", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default="bursty", help="steady | bursty | diurnal | path/to/trace.csv")
    ap.add_argument("--hours", type=float, default=24.0, help="length of a generated trace")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="", help="directory for the PNG plot (and the generated trace as CSV)")
    ap.add_argument("--name", default="", help="file name stem of the plot (default: trace and hours)")
    ap.add_argument("--idle-timeout", type=float, default=_DEFAULTS.idle_timeout_s)
    ap.add_argument("--horizon", type=float, default=_DEFAULTS.backlog_horizon_s)
    ap.add_argument("--target-p-wait", type=float, default=_DEFAULTS.target_p_wait, help="Erlang C target; 0: sqrt")
    ap.add_argument("--warm-p", type=float, default=_DEFAULTS.warm_p)
    ap.add_argument("--staffing-beta", type=float, default=_DEFAULTS.staffing_beta)
    ap.add_argument("--trend", action="store_true", help="staff for the rising arrival rate one spawn delay ahead")
    ap.add_argument(
        "--spawn-unaware",
        action="store_true",
        help="the first version's backlog rule: ignore spawn delays, never cancel a starting pod",
    )
    ap.add_argument("--expected-spawn", type=float, default=_DEFAULTS.expected_spawn_s)
    ap.add_argument("--min-workers", type=int, default=0)
    ap.add_argument("--max-workers", type=int, default=10)
    ap.add_argument("--max-hourly-spend", type=float, default=float("inf"))
    args = ap.parse_args(argv)
    if args.trace in traces.GENERATORS:
        trace = traces.GENERATORS[args.trace](hours=args.hours, seed=args.seed)
        name = f"{args.trace}_{args.hours:g}h"
    else:
        trace = traces.read_csv(args.trace)
        name = Path(args.trace).stem
    cfg = SimConfig(seed=args.seed)
    ours = PolicyParams(
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        max_hourly_spend=args.max_hourly_spend,
        idle_timeout_s=args.idle_timeout,
        backlog_horizon_s=args.horizon,
        pod_cost_per_hour=cfg.cost_per_hour,
        target_p_wait=args.target_p_wait,
        warm_p=args.warm_p,
        staffing_beta=args.staffing_beta,
        trend=args.trend,
        spawn_aware=not args.spawn_unaware,
        expected_spawn_s=args.expected_spawn,
    )
    results = compare(trace, ours, cfg)
    for r in results:
        print(json.dumps({"trace": name, **r.summary()}))
    ours_r, base_r = results
    saving = 1 - ours_r.gpu_hours / base_r.gpu_hours if base_r.gpu_hours else 0.0
    print(
        json.dumps(
            {
                "trace": name,
                "gpu_hours_saving": round(saving, 3),
                "p95_wait_delta_s": round(ours_r.wait_p95_s - base_r.wait_p95_s, 1),
            }
        )
    )
    if args.out:
        out = Path(args.out)
        if args.trace in traces.GENERATORS:
            traces.write_csv(trace, out / f"{name}.csv")
        stem = args.name or name
        png = plot(results, f"{stem}: queue policy vs baseline ({len(trace)} tasks)", out / f"{stem}.png")
        print(f"plot: {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
