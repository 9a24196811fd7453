"""Fixtures for the Wan2GP engine: the real child (worker_wgp/child.py) run against the fake Wan2GP checkout in
tests/standins/wan2gp (see its wgp.py for what it stands in for)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from worker_wgp.engine import WanEngine, WanEngineConfig

STANDIN = Path(__file__).resolve().parents[2] / "standins" / "wan2gp"
MODEL_MB = 48  # memory a loaded stand-in model holds (real, resident pages)


def standin_config(tmp_path: Path, **overrides: Any) -> WanEngineConfig:
    env = {"WGP_STANDIN_LOAD_S": "0.3", "WGP_STANDIN_MODEL_MB": str(MODEL_MB), "WGP_STANDIN_STEP_S": "0.01"}
    env.update(overrides.pop("env", {}))
    base: dict[str, Any] = {
        "wan2gp_path": STANDIN,
        "output_dir": tmp_path / "wan2gp-out",
        "args": f"--loras {tmp_path / 'loras'}",
        "startup_timeout_s": 60.0,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        "cancel_grace_s": 10.0,
        "env": env,
    }
    base.update(overrides)
    return WanEngineConfig(**base)


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[Callable[..., WanEngine]]:
    """Engines on the stand-in; every one is stopped (its child gone) after the test."""
    engines: list[WanEngine] = []

    def make(**overrides: Any) -> WanEngine:
        engine = WanEngine(standin_config(tmp_path, **overrides))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop(grace_s=5)
        assert engine.pid is None


@pytest.fixture
async def engine(make_engine: Callable[..., WanEngine]) -> WanEngine:
    return make_engine()
