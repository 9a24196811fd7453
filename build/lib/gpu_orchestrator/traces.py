"""Task-arrival traces for the simulator: CSV in and out, and generators for steady, bursty and diurnal load.

CSV columns: ``arrival_s`` (seconds from the start), ``task_type``, ``duration_s`` (GPU time once claimed).
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from comfy_worker.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TraceTask:
    arrival_s: float
    task_type: str
    duration_s: float


def read_csv(path: str | Path) -> list[TraceTask]:
    out: list[TraceTask] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"arrival_s", "task_type", "duration_s"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(
                "trace",
                f"{path}: missing column(s) {', '.join(sorted(missing))}; expected arrival_s,task_type,duration_s",
            )
        for n, row in enumerate(reader, start=2):
            try:
                out.append(TraceTask(float(row["arrival_s"]), row["task_type"] or "comfy", float(row["duration_s"])))
            except ValueError:
                raise ConfigError("trace", f"{path} line {n}: arrival_s and duration_s must be numbers") from None
    return sorted(out, key=lambda t: t.arrival_s)


def write_csv(tasks: list[TraceTask], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arrival_s", "task_type", "duration_s"])
        for t in tasks:
            w.writerow([f"{t.arrival_s:.3f}", t.task_type, f"{t.duration_s:.3f}"])


def _duration(rng: random.Random, mean_s: float) -> float:
    # log-normal with sigma 0.5: most tasks near the mean, a tail of slow ones
    sigma = 0.5
    return max(1.0, rng.lognormvariate(math.log(mean_s) - sigma**2 / 2, sigma))


def steady(
    hours: float, per_hour: float = 60.0, mean_duration_s: float = 60.0, seed: int = 1, task_type: str = "comfy"
) -> list[TraceTask]:
    """Poisson arrivals at a constant rate."""
    rng = random.Random(seed)
    t, end, out = 0.0, hours * 3600, []
    while True:
        t += rng.expovariate(per_hour / 3600)
        if t >= end:
            return out
        out.append(TraceTask(t, task_type, _duration(rng, mean_duration_s)))


def bursty(
    hours: float,
    base_per_hour: float = 20,
    burst_every_s: float = 1800,
    burst_size: int = 40,
    burst_spread_s: float = 60,
    mean_duration_s: float = 60.0,
    seed: int = 2,
) -> list[TraceTask]:
    """A low Poisson background plus bursts (a user submitting a batch) at random times around every
    ``burst_every_s``; each burst's tasks arrive within ``burst_spread_s``."""
    rng = random.Random(seed)
    out = steady(hours, base_per_hour, mean_duration_s, seed=seed + 100)
    t = rng.uniform(0, burst_every_s)
    while t < hours * 3600:
        n = max(1, int(rng.gauss(burst_size, burst_size / 4)))
        ttype = rng.choice(["comfy", "i2v"])
        out += [TraceTask(t + rng.uniform(0, burst_spread_s), ttype, _duration(rng, mean_duration_s)) for _ in range(n)]
        t += rng.expovariate(1 / burst_every_s)
    return sorted(out, key=lambda x: x.arrival_s)


def diurnal_rate(t: float, peak_per_hour: float = 240, trough_per_hour: float = 4, peak_hour: float = 15) -> float:
    """The diurnal trace's arrival rate per hour at ``t`` seconds (what a clairvoyant policy would know)."""
    phase = math.cos((t / 3600 - peak_hour) / 24 * 2 * math.pi)  # 1 at the peak, -1 twelve hours away
    return trough_per_hour + (peak_per_hour - trough_per_hour) * ((1 + phase) / 2) ** 2


def diurnal(
    hours: float = 24,
    peak_per_hour: float = 240,
    trough_per_hour: float = 4,
    peak_hour: float = 15,
    mean_duration_s: float = 60.0,
    seed: int = 3,
) -> list[TraceTask]:
    """Poisson arrivals whose rate follows the day: quiet at night, a peak in the afternoon (thinning)."""
    rng = random.Random(seed)

    def rate(t: float) -> float:
        return diurnal_rate(t, peak_per_hour, trough_per_hour, peak_hour)

    t, end, out = 0.0, hours * 3600, []
    while True:
        t += rng.expovariate(peak_per_hour / 3600)
        if t >= end:
            return out
        if rng.random() < rate(t) / peak_per_hour:
            out.append(TraceTask(t, "comfy", _duration(rng, mean_duration_s)))


GENERATORS = {"steady": steady, "bursty": bursty, "diurnal": diurnal}
