"""Benchmark: the scaling policy against the baseline on many seeds, and a clairvoyant bound for the diurnal day.

For each seed, the same generated trace and the same spawn-delay draws (gpu_orchestrator.simulate's model)
run under: the baseline (the orchestrator this replaces), our policy as first shipped (``spawn_aware=False``,
120 s horizon) and our policy now (settings' defaults, or the overrides given). It prints one markdown row per
seed and policy, then the mean GPU-hour saving and p95 difference against the baseline.

``--bound`` adds, for the diurnal trace, a clairvoyant schedule that knows the true arrival rate ahead of
time: per minute it keeps the c pods minimising c + lam * (tasks that would wait) under Erlang C, spawned one
mean spawn delay early, plus whatever the queued backlog needs; lam is swept and the cheapest schedule with
p95 wait = 0 is reported, once with the model's spawn delays and once with instant spawns. It is a bound on
what staffing for P(wait) can achieve, not on every conceivable policy.

    .venv/bin/python bench/bench_orchestrator.py --trace bursty --seeds 1-7 --max-workers 14
    .venv/bin/python bench/bench_orchestrator.py --trace diurnal --seeds 1-7 --bound
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from gpu_orchestrator import traces
from gpu_orchestrator.policy import (
    CAPACITY,
    Action,
    Decision,
    FleetState,
    PolicyParams,
    erlang_c,
    erlang_c_servers,
)
from gpu_orchestrator.simulate import SimConfig, SimResult, simulate


def clairvoyant(lam: float, lead_s: float, mean_d: float = 60.0):
    """A decide() stand-in that knows the diurnal rate: pods for min over c of c + lam * waits per second."""
    cache: dict[int, int] = {}

    def pods_for(t: float) -> int:
        minute = int(t // 60)
        if minute not in cache:
            rate = traces.diurnal_rate(minute * 60 + 30) / 3600
            load = rate * mean_d
            best = min(
                range(erlang_c_servers(load, 1e-9, 60) + 1),
                key=lambda c: c + lam * 3600 * rate * (erlang_c(c, load) if c else 1.0),
            )
            cache[minute] = best
        return cache[minute]

    def decide(state: FleetState, p: PolicyParams, now: float) -> Decision:
        want = max(pods_for(now + lead_s), state.running + state.queued if state.queued else 0)
        terminate = tuple(
            Action(w.worker_id, "gone or stuck", w.pod_id)
            for w in state.workers
            if w.status == "stopped" or (w.status == "starting" and w.age_s > p.spawn_timeout_s)
        )
        gone = {a.worker_id for a in terminate}
        live = [w for w in state.workers if w.status in CAPACITY and w.worker_id not in gone]
        spawn = max(0, want - len(live))
        drain: list[Action] = []
        if not spawn:
            idle = sorted((w for w in live if w.status == "idle"), key=lambda w: -w.idle_s)
            drain = [Action(w.worker_id, "surplus", w.pod_id) for w in idle[: max(0, len(live) - want)]]
        return Decision(want, spawn, "clairvoyant", tuple(drain), terminate, {})

    return decide


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def _row(trace: str, seed: int, name: str, r: SimResult, base: SimResult) -> str:
    change = r.gpu_hours / base.gpu_hours - 1
    return (
        f"| {trace} | {seed} | {name} | {r.gpu_hours:.1f} | {change:+.1%} | {r.wait_p50_s:.0f} | "
        f"{r.wait_p95_s:.0f} | {r.wait_p95_s - base.wait_p95_s:+.0f} | {r.pods_spawned} |"
    )


def bound(trace: list[traces.TraceTask], cfg: SimConfig, instant: bool) -> tuple[float, SimResult]:
    """The cheapest clairvoyant schedule (over a lam grid) whose p95 wait is 0."""
    run_cfg = replace(cfg, spawn_delay_s=(0.0, 0.0), stuck_spawn_p=0.0) if instant else cfg
    lead = 0.0 if instant else sum(cfg.spawn_delay_s) / 2
    best: tuple[float, SimResult] | None = None
    for lam in (0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25, 0.3, 0.4):
        r = simulate(trace, PolicyParams(), run_cfg, policy=clairvoyant(lam, lead))
        if r.wait_p95_s <= 0 and (best is None or r.gpu_hours < best[1].gpu_hours):
            best = (lam, r)
    assert best is not None, "no lam reached p95 = 0"
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", choices=("bursty", "diurnal", "steady"), default="bursty")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seeds", default="1-7", help="e.g. 1-7 or 3,7")
    ap.add_argument("--max-workers", type=int, default=10)
    ap.add_argument("--target-p-wait", type=float, default=PolicyParams().target_p_wait)
    ap.add_argument("--warm-p", type=float, default=PolicyParams().warm_p)
    ap.add_argument("--bound", action="store_true", help="add the clairvoyant bound (diurnal only)")
    args = ap.parse_args()
    ours = PolicyParams(max_workers=args.max_workers, target_p_wait=args.target_p_wait, warm_p=args.warm_p)
    first = replace(ours, spawn_aware=False, backlog_horizon_s=120.0)
    policies = {"ours (first version)": first, "ours": ours}
    print(f"trace {args.trace}, {args.hours:g} h, MAX_WORKERS {args.max_workers}, "
          f"TARGET_P_WAIT {args.target_p_wait}, WARM_P {args.warm_p}\n")
    print("| trace | seed | policy | GPU-h | vs baseline | wait p50 (s) | wait p95 (s) | p95 vs baseline | spawns |")
    print("|---|---|---|---|---|---|---|---|---|")
    savings: dict[str, list[tuple[float, float]]] = {}
    for seed in _seeds(args.seeds):
        trace = traces.GENERATORS[args.trace](hours=args.hours, seed=seed)
        cfg = SimConfig(seed=seed)
        base = simulate(trace, PolicyParams.baseline(pod_cost_per_hour=cfg.cost_per_hour), cfg)
        print(_row(args.trace, seed, "baseline", base, base))
        results = {name: simulate(trace, p, cfg) for name, p in policies.items()}
        if args.bound and args.trace == "diurnal":
            for instant in (False, True):
                lam, r = bound(trace, cfg, instant)
                results[f"clairvoyant, {'instant' if instant else 'model'} spawns (lam {lam})"] = r
        for name, r in results.items():
            print(_row(args.trace, seed, name, r, base))
            key = name.split(" (lam")[0]
            savings.setdefault(key, []).append((1 - r.gpu_hours / base.gpu_hours, r.wait_p95_s - base.wait_p95_s))
    print()
    for name, xs in savings.items():
        s = [x for x, _ in xs]
        d = [y for _, y in xs]
        met = sum(1 for x, y in xs if x >= 0.30 and y <= 0)
        print(
            f"{name}: GPU-h saving mean {statistics.fmean(s):.1%} (min {min(s):.1%}, max {max(s):.1%}); "
            f"p95 vs baseline mean {statistics.fmean(d):+.1f} s (max {max(d):+.0f} s); "
            f"goal (>= 30 % at p95 <= baseline) met on {met} of {len(xs)} seeds"
        )


if __name__ == "__main__":
    main()
