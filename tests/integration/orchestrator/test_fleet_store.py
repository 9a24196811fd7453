"""The orchestrator's store calls (``FleetStore``: record_spawned_worker, cancel_spawn, orchestrator_fleet)
against real Postgres, both through asyncpg and through supabase-py and the PostgREST stand-in; the embedded
SQLite store is refused with what to set instead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.errors import ConfigError
from comfy_worker.models import NewTask, WorkerInfo
from gpu_orchestrator.fleet import fleet_state, fleet_store
from tests.integration.conftest import make_store


@pytest.fixture(params=("postgres", "supabase"))
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    store, extra = await make_store(request.param, request, tmp_path)
    try:
        yield store
    finally:
        await store.close()
        if extra is not None:
            await extra.stop()


def _info(worker_id: str) -> WorkerInfo:
    return WorkerInfo(worker_id, "host", 1, "test", ("comfy",))


async def test_a_spawn_is_cancelled_only_while_it_has_not_registered(fleet):
    f = fleet_store(fleet)
    await f.record_spawned_worker("early", {"pod_id": "pod-early", "cost_per_hour": 0.44})
    await f.record_spawned_worker("late", {"pod_id": "pod-late"})
    await fleet.register_worker(_info("early"))  # the pod came up before the orchestrator acted

    assert await f.cancel_spawn("early", {"cancel_reason": "test"}) is False
    assert await f.cancel_spawn("late", {"cancel_reason": "test"}) is True
    assert await f.cancel_spawn("late") is False  # once
    assert await f.cancel_spawn("nobody") is False

    views = {w.worker_id: w for w in fleet_state(await f.orchestrator_fleet()).workers}
    assert views["early"].status == "idle" and not views["early"].spawn_cancelled
    assert views["early"].pod_id == "pod-early" and views["early"].cost_per_hour == 0.44
    assert views["late"].status == "draining" and views["late"].spawn_cancelled

    # the cancelled pod's daemon registers after all: it stays draining and is given nothing
    await fleet.enqueue(NewTask("comfy", {}))
    await fleet.register_worker(_info("late"))
    assert await fleet.claim("late", ["comfy"], 1, 30) == []
    assert len(await fleet.claim("early", ["comfy"], 1, 30)) == 1


async def test_the_embedded_store_is_refused_naming_the_setting(tmp_path: Path):
    from comfy_worker.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "q.db")
    with pytest.raises(ConfigError) as err:
        fleet_store(store)
    assert "DATABASE_URL" in str(err.value) and "sqlite" in str(err.value)
