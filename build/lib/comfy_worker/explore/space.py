"""Parameters and sampling: which values each run of a batch gets.

Every varied parameter but the seeds is one axis of the unit cube. A strategy picks points in the cube and each
parameter maps its coordinate onto its own values:

* ``sobol`` / ``lhs`` — ``scipy.stats.qmc`` (scrambled, seeded); Sobol takes a power of two points, so a
  ``num_samples`` that is not one is rounded up (and the plan says so);
* ``random`` — independent uniform points; ``linear`` — ``num_samples`` points from every minimum to every
  maximum at once (a sweep); ``grid`` — the product of every parameter's values (needs discrete parameters).

Parameter types: ``continuous`` (min..max, optionally snapped to ``step``), ``linear`` (min, min+step, …, max),
``values`` (a list), ``random_seed`` (a fresh integer per run, not an axis). ``seeds_per_sample`` renders each
point that many times with different seeds. Everything is deterministic in the config's ``seed``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
from scipy.stats import qmc

from comfy_worker.errors import BatchConfigInvalid

STRATEGIES = ("sobol", "lhs", "grid", "random", "linear")
TYPES = ("continuous", "linear", "values", "random_seed")
SEED_RANGE = (0, 2**32 - 1)


@dataclass(frozen=True)
class InputPath:
    """Where a parameter goes: ``nodes.<node_id>.inputs.<input>``."""

    node_id: str
    input: str

    def __str__(self) -> str:
        return f"nodes.{self.node_id}.inputs.{self.input}"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    paths: tuple[InputPath, ...]
    min: float | None = None
    max: float | None = None
    step: float | None = None
    values: tuple[Any, ...] = ()
    integer: bool = False  # the workflow's literal is an int: values are rounded to ints

    @property
    def is_axis(self) -> bool:
        return self.type != "random_seed"

    def discrete(self, key: str) -> list[Any]:
        """Every value the parameter can take (linear, values, continuous with a step)."""
        if self.type == "values":
            return list(self.values)
        if self.type == "random_seed" or self.step is None:
            raise BatchConfigInvalid(
                key, f"a {self.type} parameter has no finite set of values; give it a step (or use type: values)"
            )
        assert self.min is not None and self.max is not None
        count = math.floor((self.max - self.min) / self.step + 1e-9) + 1
        return [self._clean(self.min + i * self.step) for i in range(count)]

    def value_at(self, u: float, key: str, *, endpoints: bool = False) -> Any:
        """The value at unit coordinate ``u``. ``endpoints``: discrete values by rounding (a sweep hits the
        first and the last); otherwise by equal bins (uniform over the values)."""
        if self.type == "continuous" and self.step is None:
            assert self.min is not None and self.max is not None
            return self._clean(self.min + u * (self.max - self.min))
        values = self.discrete(key)
        n = len(values)
        index = round(u * (n - 1)) if endpoints else min(int(u * n), n - 1)
        return values[index]

    def _clean(self, v: float) -> Any:
        if self.integer:
            return round(v)
        places = 6
        if self.step is not None:
            exponent = Decimal(repr(self.step)).normalize().as_tuple().exponent
            places = max(0, -int(exponent)) if isinstance(exponent, int) else 6
        v = round(v, places)
        return float(v)


@dataclass(frozen=True)
class PlannedRun:
    run_id: int
    sample_id: int
    values: dict[str, Any]
    name: str = ""


@dataclass
class Plan:
    strategy: str
    runs: list[PlannedRun]
    points: np.ndarray  # the unit-cube points (samples x axes) before mapping
    notes: list[str] = field(default_factory=list)


def unit_points(strategy: str, n: int, d: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` points in [0, 1)^d (Sobol: the next power of two) and notes on what was adjusted."""
    notes: list[str] = []
    if d == 0:
        return np.zeros((n, 0)), notes
    if strategy == "sobol":
        m = max(0, math.ceil(math.log2(n)))
        if 2**m != n:
            notes.append(f"sobol: num_samples {n} rounded up to {2**m} (Sobol points are balanced in powers of two)")
        return qmc.Sobol(d, scramble=True, seed=seed).random_base2(m), notes
    if strategy == "lhs":
        return qmc.LatinHypercube(d, seed=seed).random(n), notes
    if strategy == "random":
        return np.random.default_rng(seed).random((n, d)), notes
    if strategy == "linear":
        return np.repeat(np.linspace(0.0, 1.0, n)[:, None], d, axis=1), notes
    raise BatchConfigInvalid("sampling_strategy", f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def plan(
    strategy: str,
    parameters: list[Parameter],
    *,
    num_samples: int,
    seeds_per_sample: int = 1,
    seed: int = 0,
) -> Plan:
    """The runs of a batch, in order: sample 0 with each of its seeds, then sample 1, …"""
    axes = [p for p in parameters if p.is_axis]
    seeds = [p for p in parameters if not p.is_axis]
    notes: list[str] = []
    if strategy == "grid":
        lists = [p.discrete(f"parameters.{p.name}") for p in axes]
        combos = list(itertools.product(*lists)) if axes else [()]
        samples = [dict(zip([p.name for p in axes], c, strict=True)) for c in combos]
        points = np.array(
            [[(lst.index(v) + 0.5) / len(lst) for v, lst in zip(c, lists, strict=True)] for c in combos]
        ).reshape(len(combos), len(axes))
        notes.append(
            "grid: " + " x ".join(f"{len(lst)} {p.name}" for p, lst in zip(axes, lists, strict=True))
            + f" = {len(combos)} points"
        )
    else:
        points, notes = unit_points(strategy, num_samples, len(axes), seed)
        if not axes:
            points = np.zeros((num_samples, 0))
        endpoints = strategy == "linear"
        samples = [
            {
                p.name: p.value_at(float(u), f"parameters.{p.name}", endpoints=endpoints)
                for p, u in zip(axes, row, strict=True)
            }
            for row in points
        ]
    rng = np.random.default_rng([seed, 7919])
    runs: list[PlannedRun] = []
    for sample_id, sample in enumerate(samples):
        for _ in range(seeds_per_sample):
            values = dict(sample)
            for p in seeds:
                lo = int(p.min if p.min is not None else SEED_RANGE[0])
                hi = int(p.max if p.max is not None else SEED_RANGE[1])
                values[p.name] = int(rng.integers(lo, hi, endpoint=True))
            runs.append(PlannedRun(len(runs), sample_id, values))
    if seeds_per_sample > 1:
        notes.append(f"{len(samples)} points x {seeds_per_sample} seeds = {len(runs)} runs")
    return Plan(strategy, runs, points, notes)


def name_runs(runs: list[PlannedRun], pattern: str) -> list[PlannedRun]:
    """Give each run its directory name from ``output.run_name_pattern``; every name must be distinct."""
    named: list[PlannedRun] = []
    seen: dict[str, int] = {}
    for run in runs:
        fields = {"run_id": run.run_id, "sample_id": run.sample_id, **run.values}
        if "seed" not in fields:
            seeds = [v for k, v in run.values.items() if "seed" in k and isinstance(v, int)]
            if seeds:
                fields["seed"] = seeds[0]
        try:
            raw = pattern.format(**fields)
        except KeyError as exc:
            known = ", ".join(sorted(fields))
            raise BatchConfigInvalid(
                "output.run_name_pattern", f"{{{exc.args[0]}}} is not a parameter; use one of: {known}"
            ) from None
        except (ValueError, IndexError, TypeError) as exc:
            raise BatchConfigInvalid("output.run_name_pattern", f"{pattern!r} cannot be formatted: {exc}") from None
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in raw).strip("._") or f"run{run.run_id}"
        if name in seen:
            raise BatchConfigInvalid(
                "output.run_name_pattern",
                f"runs {seen[name]} and {run.run_id} would both be named {name!r}; include {{run_id}} in the pattern",
            )
        seen[name] = run.run_id
        named.append(PlannedRun(run.run_id, run.sample_id, run.values, name))
    return named
